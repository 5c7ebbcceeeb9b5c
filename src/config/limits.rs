//! `[limits]` and `[sessions]`: what one connection and one identity may take.

use std::time::Duration;

use serde::Deserialize;

use super::{
    FieldError, DEFAULT_BUSY_ANSWERS, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DIAL_TIMEOUT_MS,
    DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_LINGER_MS, DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECT_BYTES, MIN_DEFAULT_PENDING, MIN_DEFAULT_PENDING_PER_SOURCE,
};

/// SPEC §10: sessions per authentication name and the per-session connect rate.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    max_per_authentication_name: Option<usize>,
    connects_per_second: Option<f64>,
    maximum_session_expiry_hours: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    connect_timeout_ms: Option<u64>,
    dial_timeout_ms: Option<u64>,
    max_connect_bytes: Option<usize>,
    max_connections: Option<usize>,
    busy_answers: Option<usize>,
    max_pending: Option<usize>,
    max_pending_per_source: Option<usize>,
    linger_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    listen_backlog: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// One deadline from TCP accept through the TLS handshake to a complete CONNECT.
    pub connect_timeout: Duration,
    pub dial_timeout: Duration,
    pub max_connect_bytes: usize,
    /// Proxied connections served normally.
    pub max_connections: usize,
    /// Connections past `max_connections` that still get a TLS handshake and a
    /// "server busy" CONNACK; past that, new TCP connections are closed before any TLS work.
    pub busy_answers: usize,
    /// Connections still in their TLS handshake or CONNECT (SPEC §7); past it, the oldest
    /// idle one is shed for a newcomer, or, with none idle, accepting pauses and new
    /// connections wait in the kernel's backlog.
    pub max_pending: usize,
    /// Pending connections from one source address before its idle ones are the first
    /// shed when the pending cap is full (server/slots.rs); never a refusal.
    pub max_pending_per_source: usize,
    /// Once one side of a session has closed, how long the other side may take to close
    /// too before mqttgate closes it (and how long a refusal or DISCONNECT may take to send).
    pub linger: Duration,
    pub drain_timeout: Duration,
    /// The accept queue asked of the kernel, which caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
}

/// `[sessions]` (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionLimits {
    /// Sessions one authentication name may hold at once on this instance (Azure: 1).
    pub max_per_authentication_name: usize,
    /// Admitted connects per second per session; 0 turns the limit off (Azure: 1).
    pub connects_per_second: f64,
    /// Azure's `maximumSessionExpiryInHours` (1 by default, 1–8), in seconds: a v5
    /// client's longer Session Expiry Interval reaches the broker capped (SPEC §10).
    pub max_session_expiry: u32,
}

/// The slowest connect rate that is not "off": one a day.
const MIN_CONNECT_RATE: f64 = 1.0 / 86_400.0;
const MAX_CONNECT_RATE: f64 = 1e6;

/// A count or a time that 0 would make meaningless.
pub(super) fn positive(field: &'static str, v: u64) -> Result<u64, FieldError> {
    match v {
        0 => Err((field, "must be greater than 0".to_string())),
        v => Ok(v),
    }
}

fn millis(field: &'static str, v: Option<u64>, default: u64) -> Result<Duration, FieldError> {
    Ok(Duration::from_millis(positive(
        field,
        v.unwrap_or(default),
    )?))
}

impl RawLimits {
    pub(super) fn validate(self) -> Result<Limits, FieldError> {
        let l = self;
        let max_connect_bytes = l.max_connect_bytes.unwrap_or(DEFAULT_MAX_CONNECT_BYTES);
        // A CONNECT can't be shorter than a v3.1.1 header with an empty client id (14 bytes),
        // and the MQTT remaining length tops out at 256 MiB.
        if !(14..=268_435_460).contains(&max_connect_bytes) {
            return Err((
                "limits.max_connect_bytes",
                format!("{max_connect_bytes} is outside 14..=268435460"),
            ));
        }
        let max_connections = positive(
            "limits.max_connections",
            l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) as u64,
        )? as usize;
        let max_pending = positive(
            "limits.max_pending",
            l.max_pending
                .unwrap_or((max_connections / 4).max(MIN_DEFAULT_PENDING)) as u64,
        )? as usize;
        let max_pending_per_source = positive(
            "limits.max_pending_per_source",
            l.max_pending_per_source
                .unwrap_or((max_pending / 4).max(MIN_DEFAULT_PENDING_PER_SOURCE))
                as u64,
        )? as usize;
        Ok(Limits {
            connect_timeout: millis(
                "limits.connect_timeout_ms",
                l.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            dial_timeout: millis(
                "limits.dial_timeout_ms",
                l.dial_timeout_ms,
                DEFAULT_DIAL_TIMEOUT_MS,
            )?,
            max_connect_bytes,
            max_connections,
            busy_answers: l.busy_answers.unwrap_or(DEFAULT_BUSY_ANSWERS),
            max_pending,
            max_pending_per_source,
            linger: millis("limits.linger_ms", l.linger_ms, DEFAULT_LINGER_MS)?,
            drain_timeout: Duration::from_millis(
                l.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
            ),
            listen_backlog: match l.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG) {
                n @ 1..=65535 => n,
                n => return Err(("limits.listen_backlog", format!("{n} is outside 1..=65535"))),
            },
        })
    }
}

impl RawSessions {
    pub(super) fn validate(self) -> Result<SessionLimits, FieldError> {
        let max_per_authentication_name = match self.max_per_authentication_name.unwrap_or(1) {
            // 0 turns the limit off (beyond Azure: one identity shared by a whole test
            // fleet, or load generators).
            0 => usize::MAX,
            n @ 1..=100 => n,
            n => {
                return Err((
                    "sessions.max_per_authentication_name",
                    format!("{n} is outside 1..=100 (Azure's range), or 0 for no limit"),
                ))
            }
        };
        let connects_per_second = match self.connects_per_second.unwrap_or(1.0) {
            0.0 => 0.0,
            // The interval is 1 / rate: at most a day, at least a microsecond, so it is
            // always a Duration (a rate of 1e-300 once panicked converting it).
            r if (MIN_CONNECT_RATE..=MAX_CONNECT_RATE).contains(&r) => r,
            r => {
                return Err((
                    "sessions.connects_per_second",
                    format!(
                        "{r} is outside {MIN_CONNECT_RATE:e}..={MAX_CONNECT_RATE:e} (one a day to a million a second), or 0 for no limit"
                    ),
                ))
            }
        };
        let max_session_expiry = match self.maximum_session_expiry_hours.unwrap_or(1) {
            h @ 1..=8 => h as u32 * 3600,
            h => {
                return Err((
                    "sessions.maximum_session_expiry_hours",
                    format!("{h} is outside 1..=8 (Azure's range)"),
                ))
            }
        };
        Ok(SessionLimits {
            max_per_authentication_name,
            connects_per_second,
            max_session_expiry,
        })
    }
}
