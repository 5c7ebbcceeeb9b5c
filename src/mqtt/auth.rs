//! The MQTT 5 AUTH packet (MQTT 5.0 §3.15), pure: what a client's re-authentication asks
//! for, and mqttgate's own answer. SPEC §9: a JWT client extends its session by sending AUTH
//! with reason 0x19 (Re-authenticate), the same Authentication Method and a new token as
//! Authentication Data; mqttgate answers it itself, the broker never sees AUTH.

use super::properties::{self, id, Value};
use super::{put_binary, put_properties, put_varint, read_varint};

/// AUTH's fixed header byte (type 15, flags 0).
pub const AUTH: u8 = 0xF0;
pub const SUCCESS: u8 = 0x00;
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
pub const REAUTHENTICATE: u8 = 0x19;

/// A client's AUTH packet, read.
#[derive(Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    pub reason: u8,
    pub method: Option<&'a str>,
    pub data: Option<&'a [u8]>,
}

/// Why an AUTH packet is malformed (the session then ends with 0x81 or 0x82).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not an AUTH packet")]
    NotAuth,
    #[error("malformed AUTH packet: {0}")]
    Malformed(&'static str),
}

/// Reads one whole AUTH packet (fixed header included).
pub fn parse(packet: &[u8]) -> Result<Auth<'_>, AuthError> {
    if packet.first() != Some(&AUTH) {
        return Err(AuthError::NotAuth);
    }
    let (len, n) = match read_varint(&packet[1..]) {
        Ok(Some(v)) => v,
        _ => return Err(AuthError::Malformed("remaining length")),
    };
    let body = packet
        .get(1 + n..1 + n + len)
        .filter(|b| 1 + n + b.len() == packet.len())
        .ok_or(AuthError::Malformed("length does not match the packet"))?;
    // MQTT-3.15.2-1: no reason code and no properties means Success.
    let Some((&reason, rest)) = body.split_first() else {
        return Ok(Auth {
            reason: SUCCESS,
            method: None,
            data: None,
        });
    };
    let props = match rest {
        [] => &[][..],
        _ => {
            let (plen, pn) = match read_varint(rest) {
                Ok(Some(v)) => v,
                _ => return Err(AuthError::Malformed("property length")),
            };
            rest.get(pn..pn + plen)
                .filter(|p| pn + p.len() == rest.len())
                .ok_or(AuthError::Malformed("property length"))?
        }
    };
    let method = match properties::find(props, id::AUTHENTICATION_METHOD) {
        Ok(Some(Value::Str(m))) => Some(m),
        Ok(None) => None,
        _ => return Err(AuthError::Malformed("authentication method")),
    };
    let data = match properties::find(props, id::AUTHENTICATION_DATA) {
        Ok(Some(Value::Binary(d))) => Some(d),
        Ok(None) => None,
        _ => return Err(AuthError::Malformed("authentication data")),
    };
    Ok(Auth {
        reason,
        method,
        data,
    })
}

/// mqttgate's AUTH to the client: `reason` with the Authentication Method (MQTT-4.12.0-5:
/// the same method throughout).
pub fn packet(reason: u8, method: &str) -> Vec<u8> {
    let mut props = vec![id::AUTHENTICATION_METHOD];
    put_binary(&mut props, method.as_bytes());
    let mut body = vec![reason];
    put_properties(&mut body, &props);
    let mut out = vec![AUTH];
    put_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_auth(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
        let mut props = vec![id::AUTHENTICATION_METHOD];
        put_binary(&mut props, method.as_bytes());
        props.push(id::AUTHENTICATION_DATA);
        put_binary(&mut props, data);
        let mut body = vec![reason];
        put_properties(&mut body, &props);
        let mut out = vec![AUTH];
        put_varint(&mut out, body.len());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_reauthentication_carries_its_method_and_token() {
        let p = client_auth(REAUTHENTICATE, "CUSTOM-JWT", b"a.b.c");
        assert_eq!(
            parse(&p),
            Ok(Auth {
                reason: REAUTHENTICATE,
                method: Some("CUSTOM-JWT"),
                data: Some(&b"a.b.c"[..]),
            })
        );
    }

    #[test]
    fn an_empty_auth_is_success_and_ours_round_trips() {
        assert_eq!(parse(&[0xF0, 0x00]).unwrap().reason, SUCCESS);
        let ours = packet(SUCCESS, "CUSTOM-JWT");
        assert_eq!(ours[..4], [0xF0, 0x0F, 0x00, 0x0D]);
        let back = parse(&ours).unwrap();
        assert_eq!((back.reason, back.method), (SUCCESS, Some("CUSTOM-JWT")));
    }

    #[test]
    fn malformed_packets_are_refused_not_misread() {
        let good = client_auth(REAUTHENTICATE, "CUSTOM-JWT", b"t");
        for cut in 2..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(parse(&[0xE0, 0x00]), Err(AuthError::NotAuth));
        // A method that is not UTF-8 is malformed, not a method.
        let bad = client_auth(REAUTHENTICATE, "CUSTOM-JWT", b"t");
        let mut bad = bad;
        bad[8] = 0xff;
        assert_eq!(
            parse(&bad),
            Err(AuthError::Malformed("authentication method"))
        );
    }
}
