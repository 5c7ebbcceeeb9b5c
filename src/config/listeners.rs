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
        Ok(WebSocketListener {
            listen: parse_addr("websocket.listen", &self.listen)?,
            rules: UpgradeRules {
                path,
                max_request_bytes,
            },
            inbound_proxy: parse_inbound_proxy(
                "websocket.proxy_protocol",
                self.proxy_protocol.as_deref(),
                trusted_proxies,
            )?,
        })
    }
}
