//! The client listeners' settings beyond an address: PROXY protocol v2 in, and the
//! WebSocket listener (SPEC §8).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{parse_addr, FieldError};
use crate::transport::proxy::Cidr;
use crate::transport::ws::UpgradeRules;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    listen: String,
    path: Option<String>,
    /// "required": like the top-level key, for this listener (same `trusted_proxies`).
    proxy_protocol: Option<String>,
    max_request_bytes: Option<usize>,
    /// Browser origins that may open a WebSocket (transport/ws/upgrade.rs).
    allowed_origins: Option<Vec<String>>,
}

/// The WebSocket listener: its address, its upgrade rules and its PROXY protocol setting.
#[derive(Clone, Debug)]
pub struct WebSocketListener {
    pub listen: SocketAddr,
    pub rules: UpgradeRules,
    pub inbound_proxy: Option<Vec<Cidr>>,
}

pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

/// Browsers send 400–800 bytes; long cookies or tokens in the query string more.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8192;

/// `proxy_protocol` for a listener: "required" takes headers from `trusted_proxies` only.
pub(super) fn parse_inbound_proxy(
    field: &'static str,
    value: Option<&str>,
    trusted: &[String],
) -> Result<Option<Vec<Cidr>>, (&'static str, String)> {
    match value {
        None | Some("off") => Ok(None),
        Some("required") => {
            if trusted.is_empty() {
                return Err((
                    "trusted_proxies",
                    format!("required with {field} = \"required\": the load balancers' networks"),
                ));
            }
            let cidrs = trusted
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("trusted_proxies", e))?;
            Ok(Some(cidrs))
        }
        Some(other) => Err((field, format!("{other:?} is not \"required\" or \"off\""))),
    }
}

impl RawWebSocket {
    pub(super) fn validate(
        &self,
        trusted_proxies: &[String],
    ) -> Result<WebSocketListener, FieldError> {
        let path = match self.path.as_deref().unwrap_or(DEFAULT_WEBSOCKET_PATH) {
            p if p.starts_with('/') && !p.contains(['?', '#', ' ']) => p.to_string(),
            p => {
                return Err((
                    "websocket.path",
                    format!("{p:?} is not an absolute path like \"/mqtt\""),
                ))
            }
        };
        let max_request_bytes = match self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES) {
            n @ 256..=65_536 => n,
            n => {
                return Err((
                    "websocket.max_request_bytes",
                    format!("{n} is outside 256..=65536"),
                ))
            }
        };
        let allowed_origins = self
            .allowed_origins
            .iter()
            .flatten()
            .map(|o| origin(o).map_err(|e| ("websocket.allowed_origins", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebSocketListener {
            listen: parse_addr("websocket.listen", &self.listen)?,
            rules: UpgradeRules {
                path,
                max_request_bytes,
                allowed_origins,
            },
            inbound_proxy: parse_inbound_proxy(
                "websocket.proxy_protocol",
                self.proxy_protocol.as_deref(),
                trusted_proxies,
            )?,
        })
    }
}

/// One `allowed_origins` entry, lowercased: `scheme://host[:port]` as a browser sends it
/// in `Origin` (no path, no trailing slash, no user), so it can be compared as a string.
fn origin(entry: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{entry:?} is not scheme://host[:port] ({why})");
    let (scheme, rest) = entry.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(bad("bad scheme"));
    }
    // A bracketed IPv6 literal keeps its colons inside the brackets.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        && (host.contains('[') == host.ends_with(']'))
        && (!host.contains(':') || host.starts_with('['));
    if !host_ok {
        return Err(bad("bad host"));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('0') => {}
            _ => return Err(bad("bad port")),
        }
    }
    Ok(entry.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origins_as_browsers_send_them_are_taken_lowercased() {
        for (entry, want) in [
            ("https://app.example.com", "https://app.example.com"),
            ("HTTP://LocalHost:3000", "http://localhost:3000"),
            ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
            ("https://[::1]", "https://[::1]"),
            ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ] {
            assert_eq!(origin(entry).as_deref(), Ok(want), "{entry}");
        }
    }

    #[test]
    fn anything_but_scheme_host_port_is_refused_naming_the_entry() {
        for entry in [
            "",
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/mqtt",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:08",
            "https://app example.com",
            "https://a:b:c",
            "https://[::1",
            "1http://x",
            "*",
            "null",
        ] {
            let e = origin(entry).expect_err(entry);
            assert!(e.contains(&format!("{entry:?}")), "{e}");
        }
    }
}
