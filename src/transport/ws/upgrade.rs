//! The WebSocket opening handshake (RFC 6455 §4.2), I/O-free: the client's HTTP/1.1
//! Upgrade request checked against the listener's path, its allowed origins and MQTT's
//! subprotocols (MQTT 5.0 §6), and the exact response bytes for an accepted or a refused
//! upgrade.
//!
//! Origin: a browser names the page that opened the WebSocket in `Origin`, and the page's
//! script can't change it, so a page on another site can't use a visitor's browser (and a
//! client certificate installed in it) to reach the gate. With an `Origin`, the upgrade is
//! accepted only when it is one of `[websocket] allowed_origins`, compared as ASCII
//! case-insensitive strings (`scheme://host[:port]`, the port only when not the scheme's
//! default, as browsers send it), or the gate's own origin (`https://` and the request's
//! `Host`): paho-mqtt sends that one, and no page of another site can. The default, an
//! empty list, refuses every other site's page. Clients that send no `Origin` (MQTT.js in
//! Node, devices) are not affected.

use aws_lc_rs::digest;
use base64::Engine;

/// The subprotocols MQTT registers, in the order we prefer them: `mqtt` (MQTT 3.1.1 and
/// 5) and `mqttv3.1`, which older clients (paho's MQTT 3.1) still send.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Headers a request may carry; browsers send about fifteen.
const MAX_HEADERS: usize = 32;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade was refused: one HTTP status each, one metric label each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// Not a well-formed HTTP/1.1 GET with a valid `Sec-WebSocket-Key`, or bytes sent
    /// before the server's answer.
    BadRequest,
    /// Another path than the listener's.
    NotFound,
    /// A plain HTTP request (no `Upgrade: websocket`), or a WebSocket version other than
    /// 13: 426 tells the client what to speak.
    UpgradeRequired,
    /// No `mqtt` or `mqttv3.1` among the offered subprotocols (MQTT-6.0.0-3/4).
    NoSubprotocol,
    /// An `Origin` header (a browser page) not in `websocket.allowed_origins`, or more
    /// than one.
    ForbiddenOrigin,
    /// The request is longer than `websocket.max_request_bytes`.
    TooLarge,
    /// No complete request within the connect deadline.
    Timeout,
    /// The client closed or failed before its request was complete: nothing to answer.
    ClientGone,
}

impl UpgradeRefusal {
    pub fn label(self) -> &'static str {
        match self {
            UpgradeRefusal::BadRequest => "upgrade_bad_request",
            UpgradeRefusal::NotFound => "upgrade_not_found",
            UpgradeRefusal::UpgradeRequired => "upgrade_required",
            UpgradeRefusal::NoSubprotocol => "upgrade_no_subprotocol",
            UpgradeRefusal::ForbiddenOrigin => "upgrade_forbidden_origin",
            UpgradeRefusal::TooLarge => "upgrade_too_large",
            UpgradeRefusal::Timeout => "upgrade_timeout",
            UpgradeRefusal::ClientGone => "upgrade_client_gone",
        }
    }

    /// The whole HTTP response; `Connection: close` because the connection ends with it.
    pub fn response(self) -> Option<&'static str> {
        Some(match self {
            UpgradeRefusal::BadRequest | UpgradeRefusal::NoSubprotocol => {
                "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::NotFound => {
                "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::ForbiddenOrigin => {
                "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::UpgradeRequired => {
                "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::TooLarge => {
                "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::Timeout => {
                "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            UpgradeRefusal::ClientGone => return None,
        })
    }
}

/// An acceptable upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    pub subprotocol: &'static str,
    /// The request's length: anything after it came before our answer.
    pub len: usize,
}

impl Accepted {
    pub fn response(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            self.accept, self.subprotocol
        )
    }
}

/// Checks the request at the start of `bytes` against the listener's `path` and allowed
/// `origins` (lowercase): `Ok(None)` while it is incomplete.
pub fn parse(
    bytes: &[u8],
    path: &str,
    origins: &[String],
) -> Result<Option<Accepted>, UpgradeRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(UpgradeRefusal::BadRequest),
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(UpgradeRefusal::BadRequest);
    }
    // The query string is the client's business (some pass tokens in it); the path decides.
    let target = req.path.unwrap_or("");
    if target.split('?').next() != Some(path) {
        return Err(UpgradeRefusal::NotFound);
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let tokens = |name: &'static str| {
        header(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    if !tokens("upgrade")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("websocket"))
        || !tokens("connection")
            .iter()
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(UpgradeRefusal::UpgradeRequired);
    }
    if tokens("sec-websocket-version") != ["13"] {
        return Err(UpgradeRefusal::UpgradeRequired);
    }
    let key = header("sec-websocket-key")
        .next()
        .map(str::trim)
        .ok_or(UpgradeRefusal::BadRequest)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(UpgradeRefusal::BadRequest),
    }
    let mut origin = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("origin"));
    if let Some(first) = origin.next() {
        let value = first.value.trim_ascii();
        let host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value.trim_ascii());
        let own = |host: &[u8]| {
            value.len() == 8 + host.len()
                && value[..8].eq_ignore_ascii_case(b"https://")
                && value[8..].eq_ignore_ascii_case(host)
        };
        let allowed = origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(value))
            || host.is_some_and(|h| !h.is_empty() && own(h));
        // Two Origin headers: no browser sends that, so neither is trusted.
        if !allowed || origin.next().is_some() {
            return Err(UpgradeRefusal::ForbiddenOrigin);
        }
    }
    let offered = tokens("sec-websocket-protocol");
    let subprotocol = SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.contains(p))
        .ok_or(UpgradeRefusal::NoSubprotocol)?;
    Ok(Some(Accepted {
        accept: accept_key(key),
        subprotocol,
        len,
    }))
}

/// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2): SHA-1 here is the protocol's fixed
/// derivation, not a security measure.
fn accept_key(key: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut r = lines.join("\r\n");
        r.push_str("\r\n\r\n");
        r.into_bytes()
    }

    const GOOD: [&str; 7] = [
        "GET /mqtt HTTP/1.1",
        "Host: gate",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: mqttv3.1, mqtt",
    ];

    #[test]
    fn the_rfc_example_key_and_mqtt_preferred() {
        let bytes = request(&GOOD);
        let a = parse(&bytes, "/mqtt", &[]).unwrap().unwrap();
        // RFC 6455 §1.3's worked example.
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.subprotocol, "mqtt");
        assert_eq!(a.len, bytes.len());
        assert!(a
            .response()
            .starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(a.response().contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    }

    #[test]
    fn every_prefix_is_incomplete_not_refused() {
        let bytes = request(&GOOD);
        for end in 0..bytes.len() {
            assert_eq!(parse(&bytes[..end], "/mqtt", &[]), Ok(None), "prefix {end}");
        }
    }

    #[test]
    fn mqttv31_alone_and_a_query_string_are_accepted() {
        let mut lines = GOOD;
        lines[0] = "GET /mqtt?x=1 HTTP/1.1";
        lines[6] = "sec-websocket-protocol: mqttv3.1";
        let a = parse(&request(&lines), "/mqtt", &[]).unwrap().unwrap();
        assert_eq!(a.subprotocol, "mqttv3.1");
    }

    #[test]
    fn each_refusal_has_its_status() {
        let with = |i: usize, line: &'static str| {
            let mut l = GOOD.to_vec();
            if line.is_empty() {
                l.remove(i);
            } else {
                l[i] = line;
            }
            parse(&request(&l), "/mqtt", &[])
        };
        use UpgradeRefusal::*;
        assert_eq!(with(0, "GET /other HTTP/1.1"), Err(NotFound));
        assert_eq!(with(0, "POST /mqtt HTTP/1.1"), Err(BadRequest));
        assert_eq!(with(0, "GET /mqtt HTTP/1.0"), Err(BadRequest));
        assert_eq!(with(2, ""), Err(UpgradeRequired));
        assert_eq!(with(3, "Connection: keep-alive"), Err(UpgradeRequired));
        assert_eq!(with(5, "Sec-WebSocket-Version: 8"), Err(UpgradeRequired));
        assert_eq!(with(4, ""), Err(BadRequest));
        assert_eq!(with(4, "Sec-WebSocket-Key: c2hvcnQ="), Err(BadRequest));
        assert_eq!(with(6, ""), Err(NoSubprotocol));
        assert_eq!(with(6, "Sec-WebSocket-Protocol: chat"), Err(NoSubprotocol));
        assert_eq!(
            parse(b"\x16\x03\x01garbage\r\n\r\n", "/mqtt", &[]),
            Err(BadRequest)
        );
        for r in [
            BadRequest,
            NotFound,
            ForbiddenOrigin,
            UpgradeRequired,
            NoSubprotocol,
            TooLarge,
            Timeout,
        ] {
            let resp = r.response().unwrap();
            let status = &resp[9..12];
            let want = match r {
                BadRequest | NoSubprotocol => "400",
                NotFound => "404",
                ForbiddenOrigin => "403",
                UpgradeRequired => "426",
                TooLarge => "431",
                Timeout => "408",
                ClientGone => unreachable!(),
            };
            assert_eq!(status, want, "{r:?}");
        }
        assert_eq!(ClientGone.response(), None);
    }

    #[test]
    fn an_origin_is_accepted_only_when_allowed_and_no_origin_changes_nothing() {
        let allowed = [
            "https://app.example.com".to_string(),
            "http://localhost:3000".to_string(),
        ];
        let with_origin = |origin: &str| {
            let mut l = GOOD.to_vec();
            l.push(origin);
            parse(&request(&l), "/mqtt", &allowed)
        };
        assert!(with_origin("Origin: https://app.example.com")
            .unwrap()
            .is_some());
        // Case-insensitive, as hosts and schemes are.
        assert!(with_origin("origin: HTTPS://App.Example.COM")
            .unwrap()
            .is_some());
        assert!(with_origin("Origin: http://localhost:3000")
            .unwrap()
            .is_some());
        use UpgradeRefusal::ForbiddenOrigin;
        assert_eq!(
            with_origin("Origin: https://evil.example"),
            Err(ForbiddenOrigin)
        );
        // Another port or scheme is another origin.
        assert_eq!(
            with_origin("Origin: http://localhost:3001"),
            Err(ForbiddenOrigin)
        );
        assert_eq!(
            with_origin("Origin: http://app.example.com"),
            Err(ForbiddenOrigin)
        );
        assert_eq!(with_origin("Origin: null"), Err(ForbiddenOrigin));
        assert_eq!(with_origin("Origin: \u{e9}"), Err(ForbiddenOrigin));
        // No Origin: not a browser page, nothing changes, whatever the list.
        assert!(parse(&request(&GOOD), "/mqtt", &allowed).unwrap().is_some());
        assert!(parse(&request(&GOOD), "/mqtt", &[]).unwrap().is_some());
        // An empty list refuses every page.
        let mut l = GOOD.to_vec();
        l.push("Origin: https://app.example.com");
        assert_eq!(parse(&request(&l), "/mqtt", &[]), Err(ForbiddenOrigin));
        // The gate's own origin (as paho-mqtt sends it) needs no listing; only over TLS.
        let own = |origin: &'static str| {
            let mut l = GOOD.to_vec();
            l[1] = "Host: Gate.Example:8443";
            l.push(origin);
            parse(&request(&l), "/mqtt", &[])
        };
        assert!(own("Origin: https://gate.example:8443").unwrap().is_some());
        assert_eq!(
            own("Origin: http://gate.example:8443"),
            Err(ForbiddenOrigin)
        );
        assert_eq!(own("Origin: https://gate.example"), Err(ForbiddenOrigin));
        assert_eq!(
            own("Origin: https://gate.example:8443.evil"),
            Err(ForbiddenOrigin)
        );
        // Two Origin headers, even both allowed, are refused.
        l.push("Origin: https://app.example.com");
        assert_eq!(parse(&request(&l), "/mqtt", &allowed), Err(ForbiddenOrigin));
    }
}
