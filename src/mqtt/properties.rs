//! MQTT 5 properties (pure): a typed view over a property list, and the list without some
//! identifiers. The CONNECT keeps its properties as the client's bytes (so an unchanged
//! CONNECT re-encodes byte for byte); this module reads them where a decision needs one (the
//! Authentication Method and Data for JWT clients, SPEC §9) and removes the ones the broker
//! must not see.

use thiserror::Error;

use super::read_varint;

/// Property identifiers mqttgate reads or removes (MQTT 5.0 §2.2.2.2).
pub mod id {
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REASON_STRING: u8 = 0x1F;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const USER_PROPERTY: u8 = 0x26;
}

/// One property's value, by the type its identifier has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Byte(u8),
    TwoBytes(u16),
    FourBytes(u32),
    VarInt(u32),
    Str(&'a str),
    Binary(&'a [u8]),
    Pair(&'a str, &'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property<'a> {
    pub id: u8,
    pub value: Value<'a>,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error("unknown property identifier 0x{0:02x}")]
    UnknownId(u8),
    #[error("a property runs past the end of the list")]
    Truncated,
    #[error("a property string is not utf-8")]
    NotUtf8,
    #[error("malformed variable byte integer in a property")]
    BadVarInt,
}

/// The value types of MQTT 5 properties.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    TwoBytes,
    FourBytes,
    VarInt,
    Str,
    Binary,
    Pair,
}

/// The value type of each identifier MQTT 5 defines; None for an unknown one.
fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Kind::Byte,
        0x13 | 0x21 | 0x22 | 0x23 => Kind::TwoBytes,
        0x02 | 0x11 | 0x18 | 0x27 => Kind::FourBytes,
        0x0B => Kind::VarInt,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Kind::Str,
        0x09 | 0x16 => Kind::Binary,
        0x26 => Kind::Pair,
        _ => return None,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PropertyError> {
        let end = self.pos.checked_add(n).ok_or(PropertyError::Truncated)?;
        let taken = self
            .bytes
            .get(self.pos..end)
            .ok_or(PropertyError::Truncated)?;
        self.pos = end;
        Ok(taken)
    }

    fn binary(&mut self) -> Result<&'a [u8], PropertyError> {
        let len = self.take(2)?;
        self.take(usize::from(u16::from_be_bytes([len[0], len[1]])))
    }

    fn str(&mut self) -> Result<&'a str, PropertyError> {
        std::str::from_utf8(self.binary()?).map_err(|_| PropertyError::NotUtf8)
    }

    /// One property: its identifier, then a value of its identifier's type.
    fn property(&mut self) -> Result<Property<'a>, PropertyError> {
        let id = self.take(1)?[0];
        let value = match kind(id).ok_or(PropertyError::UnknownId(id))? {
            Kind::Byte => Value::Byte(self.take(1)?[0]),
            Kind::TwoBytes => {
                let b = self.take(2)?;
                Value::TwoBytes(u16::from_be_bytes([b[0], b[1]]))
            }
            Kind::FourBytes => {
                let b = self.take(4)?;
                Value::FourBytes(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            Kind::VarInt => match read_varint(&self.bytes[self.pos..]) {
                Ok(Some((v, used))) => {
                    self.take(used)?;
                    Value::VarInt(v as u32)
                }
                Ok(None) => return Err(PropertyError::Truncated),
                Err(_) => return Err(PropertyError::BadVarInt),
            },
            Kind::Str => Value::Str(self.str()?),
            Kind::Binary => Value::Binary(self.binary()?),
            Kind::Pair => Value::Pair(self.str()?, self.str()?),
        };
        Ok(Property { id, value })
    }
}

/// Every property of a list (without its length prefix) with the bytes it spans.
fn spans(bytes: &[u8]) -> impl Iterator<Item = Result<(Property<'_>, &[u8]), PropertyError>> {
    let mut c = Cursor { bytes, pos: 0 };
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || c.pos >= c.bytes.len() {
            return None;
        }
        let start = c.pos;
        let item = c.property().map(|p| (p, &c.bytes[start..c.pos]));
        failed = item.is_err();
        Some(item)
    })
}

/// Every property of a list, typed.
pub fn parse(bytes: &[u8]) -> Result<Vec<Property<'_>>, PropertyError> {
    spans(bytes).map(|s| s.map(|(p, _)| p)).collect()
}

/// The first property with `id`, typed.
pub fn find(bytes: &[u8], id: u8) -> Result<Option<Value<'_>>, PropertyError> {
    Ok(parse(bytes)?
        .into_iter()
        .find(|p| p.id == id)
        .map(|p| p.value))
}

/// The first property with `id`, without allocating (read per packet); properties after
/// it are not checked.
pub fn first(bytes: &[u8], id: u8) -> Result<Option<Value<'_>>, PropertyError> {
    for span in spans(bytes) {
        let (property, _) = span?;
        if property.id == id {
            return Ok(Some(property.value));
        }
    }
    Ok(None)
}

/// The list with every property whose identifier is in `ids` removed, the others kept byte
/// for byte and in order.
pub fn without(bytes: &[u8], ids: &[u8]) -> Result<Vec<u8>, PropertyError> {
    let mut out = Vec::with_capacity(bytes.len());
    for span in spans(bytes) {
        let (property, whole) = span?;
        if !ids.contains(&property.id) {
            out.extend_from_slice(whole);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v5 CONNECT properties from NOTES.md's `mosquitto_pub` capture: session expiry
    /// 3600, user property k1=v1, receive maximum 20, maximum packet size 100000, topic alias
    /// maximum 10, request problem information 1, request response information 1.
    const CAPTURED: &str = "1100000e102600026b310002763121001427000186a022000a17011901";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_captured_property_list_reads_as_its_values() {
        let bytes = hex(CAPTURED);
        let props = parse(&bytes).unwrap();
        let want = [
            (0x11, Value::FourBytes(3600)),
            (0x26, Value::Pair("k1", "v1")),
            (0x21, Value::TwoBytes(20)),
            (0x27, Value::FourBytes(100_000)),
            (0x22, Value::TwoBytes(10)),
            (0x17, Value::Byte(1)),
            (0x19, Value::Byte(1)),
        ];
        let got: Vec<(u8, Value<'_>)> = props.iter().map(|p| (p.id, p.value)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn authentication_properties_are_found_and_removed_leaving_the_rest_intact() {
        let mut bytes = hex(CAPTURED);
        let tail = bytes.split_off(5); // after the session expiry
        bytes.extend_from_slice(&[id::AUTHENTICATION_METHOD, 0, 10]);
        bytes.extend_from_slice(b"CUSTOM-JWT");
        bytes.extend_from_slice(&[id::AUTHENTICATION_DATA, 0, 3, b'a', b'.', b'b']);
        bytes.extend_from_slice(&tail);
        assert_eq!(
            find(&bytes, id::AUTHENTICATION_METHOD).unwrap(),
            Some(Value::Str("CUSTOM-JWT"))
        );
        assert_eq!(
            find(&bytes, id::AUTHENTICATION_DATA).unwrap(),
            Some(Value::Binary(b"a.b"))
        );
        let stripped = without(
            &bytes,
            &[id::AUTHENTICATION_METHOD, id::AUTHENTICATION_DATA],
        )
        .unwrap();
        assert_eq!(stripped, hex(CAPTURED));
    }

    #[test]
    fn every_proper_prefix_that_cuts_a_property_is_an_error_never_a_panic() {
        let bytes = hex(CAPTURED);
        let boundaries = [0usize, 5, 14, 17, 22, 25, 27];
        for n in 0..bytes.len() {
            let r = parse(&bytes[..n]);
            if boundaries.contains(&n) {
                assert!(r.is_ok(), "prefix {n}: {r:?}");
            } else {
                assert_eq!(r, Err(PropertyError::Truncated), "prefix {n}");
            }
        }
    }

    #[test]
    fn unknown_identifiers_and_bad_strings_are_errors() {
        assert_eq!(parse(&[0x7f, 0]), Err(PropertyError::UnknownId(0x7f)));
        assert_eq!(
            parse(&[id::REASON_STRING, 0, 1, 0xff]),
            Err(PropertyError::NotUtf8)
        );
        assert_eq!(without(&[0x7f], &[]), Err(PropertyError::UnknownId(0x7f)));
    }
}
