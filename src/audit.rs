//! The audit log: one event per authentication decision and one per closed session, on
//! the `mqttgate::audit` tracing target. Denials from one peer address are rate-limited
//! in the log (metrics count every one), so a misconfigured device retrying in a loop
//! can't flood the log. Passwords are never logged: no event takes the CONNECT password.
//!
//! Strings a client chooses (client id, username, certificate fields) are recorded as
//! `str` values: the text format quotes and escapes them, JSON escapes them. The text
//! format's field writer ([`TextFields`]) also escapes control characters in every other
//! value, so one event is one line whatever a field holds.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{info, warn};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

use crate::auth::webhook::Answer;
use crate::auth::{Denial, Identity, Method};
use crate::mqtt::Connect;
use crate::trust::cert::CertInfo;

/// Denials logged per peer address per window; the rest are counted and summarised.
const DENIALS_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// Peer addresses tracked at once; past this the oldest windows are dropped, so a scan
/// from many addresses costs bounded memory.
const MAX_PEERS: usize = 4096;

#[derive(Default)]
pub struct DenialLimiter {
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl DenialLimiter {
    /// Should this denial be logged? Returns `(log_it, suppressed_before)`: when a new
    /// window starts after suppression, the count of denials not logged in the last one.
    pub fn check(&self, ip: IpAddr, now: Instant) -> (bool, u32) {
        let mut peers = self.peers.lock().expect("not poisoned");
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let entry = peers.entry(ip).or_insert((now, 0));
        let mut suppressed = 0;
        if now.duration_since(entry.0) >= WINDOW {
            suppressed = entry.1.saturating_sub(DENIALS_PER_WINDOW);
            *entry = (now, 0);
        }
        entry.1 += 1;
        (entry.1 <= DENIALS_PER_WINDOW, suppressed)
    }
}

/// TLS facts for the decision event.
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
}

#[allow(clippy::too_many_arguments)]
pub fn decision(
    limiter: &DenialLimiter,
    decision: Result<&Identity, &Denial>,
    cert: Option<&CertInfo>,
    method: Method,
    connect: &Connect,
    peer: SocketAddr,
    tls: &TlsFacts,
    labels: (&str, &str, &str, &str),
) {
    let (result, reason, scheme, source) = labels;
    if decision.is_err() {
        let (log, suppressed) = limiter.check(peer.ip(), Instant::now());
        if suppressed > 0 {
            warn!(target: "mqttgate::audit", event = "denials_suppressed", peer = %peer.ip(), suppressed, "denials from this address were not logged in the last minute");
        }
        if !log {
            return;
        }
    }
    let name = match decision {
        Ok(id) => Some(id.authentication_name.as_str()),
        Err(d) => d.name.as_deref(),
    };
    // A JWT or webhook client may have presented no certificate; a token is never
    // logged, only the `jti` (and the `sub`, as the authentication name) of an accepted one.
    let jti = decision.ok().and_then(|id| id.jti.as_deref());
    let (no_strings, no_ips): (&[String], &[IpAddr]) = (&[], &[]);
    info!(
        target: "mqttgate::audit",
        event = "decision",
        result,
        reason,
        method = method.label(),
        %peer,
        client_id = connect.client_id.as_str(),
        authentication_name = name.unwrap_or(""),
        source,
        scheme,
        jti = jti.unwrap_or(""),
        subject = cert.map_or("", |c| c.subject_dn.as_str()),
        dns = ?cert.map_or(no_strings, |c| &c.dns),
        uris = ?cert.map_or(no_strings, |c| &c.uris),
        emails = ?cert.map_or(no_strings, |c| &c.emails),
        ips = ?cert.map_or(no_ips, |c| &c.ips),
        thumbprint = %cert.map(|c| c.thumbprint.to_string()).unwrap_or_default(),
        issuer = cert.map_or("", |c| c.issuer_dn.as_str()),
        serial = cert.map_or("", |c| c.serial_hex.as_str()),
        tls_version = %tls.version,
        cipher = %tls.cipher,
        mqtt = connect.version.label(),
        "authentication decision"
    );
}

/// What the authentication webhook answered about one CONNECT (`result`: the
/// `mqttgate_webhook_requests_total` label), never what was sent to it: the request
/// carries the password and the bearer token, the answer neither.
pub fn webhook_answer(
    limiter: &DenialLimiter,
    peer: SocketAddr,
    client_id: &str,
    result: &str,
    answer: Option<&Answer>,
    duration: Duration,
) {
    if !matches!(answer, Some(Answer::Allow { .. })) && !limiter.check(peer.ip(), Instant::now()).0
    {
        return;
    }
    let none = String::new();
    let (name, attributes, expiration, reason) = match answer {
        Some(Answer::Allow {
            name,
            attributes,
            expiration,
            ..
        }) => (name, format!("{attributes:?}"), *expiration, ""),
        Some(Answer::Deny { reason }) => {
            (&none, String::new(), None, reason.as_deref().unwrap_or(""))
        }
        Some(Answer::Malformed(why)) => (&none, String::new(), None, *why),
        None => (&none, String::new(), None, ""),
    };
    info!(
        target: "mqttgate::audit",
        event = "webhook_answer",
        %peer,
        client_id,
        result,
        authentication_name = name.as_str(),
        attributes = attributes.as_str(),
        expiration = expiration.unwrap_or(0),
        reason,
        duration_ms = duration.as_millis() as u64,
        "webhook answer"
    );
}

/// One line per accepted connection, however it ended (`outcome`: tls_failure, refused
/// or session).
/// SPEC §12: a refusal audit-only mode recorded instead of enforcing.
pub fn would_deny(reason: &str, name: &str) {
    info!(
        target: "mqttgate::audit",
        event = "decision",
        result = "would_deny",
        reason,
        authentication_name = name,
        "would deny (audit-only mode)"
    );
}

pub fn closed(
    peer: crate::transport::Peer,
    outcome: &str,
    reason: &str,
    name: &str,
    bytes: (u64, u64),
    duration: Duration,
) {
    info!(
        target: "mqttgate::audit",
        event = "closed",
        peer = %peer.addr,
        transport = peer.transport.label(),
        outcome,
        authentication_name = name,
        reason,
        bytes_to_broker = bytes.0,
        bytes_to_client = bytes.1,
        duration_ms = duration.as_millis() as u64,
        "connection closed"
    );
}

/// The text log's field writer: tracing's default layout (`name=value` separated by
/// spaces, the message bare, `str` values quoted), with control characters escaped in
/// every value.
pub struct TextFields;

impl<'w> MakeVisitor<Writer<'w>> for TextFields {
    type Visitor = TextVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> TextVisitor<'w> {
        TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

pub struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Records from the `log` crate carry their metadata as fields; the event line
        // already shows it.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = write_field(&mut self.writer, !self.first, name, value);
        self.first = false;
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

fn write_field(
    out: &mut dyn fmt::Write,
    separate: bool,
    name: &str,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    if separate {
        out.write_char(' ')?;
    }
    if name != "message" {
        write!(out, "{name}=")?;
    }
    write!(EscapeControl(out), "{value:?}")
}

/// Passes text on with control characters (and the Unicode line and paragraph
/// separators) written as escapes, so a value cannot end the line it is on.
struct EscapeControl<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for EscapeControl<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) =
            rest.find(|c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found a character");
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, value: &dyn fmt::Debug) -> String {
        let mut out = String::new();
        write_field(&mut out, false, name, value).unwrap();
        out
    }

    #[test]
    fn text_values_cannot_break_their_line() {
        let forged = "dev\n2026-01-01T00:00:00Z  INFO forged";
        // A Display value (`%x`) arrives raw; control characters are escaped.
        assert_eq!(
            field("client_id", &format_args!("{forged}")),
            "client_id=dev\\n2026-01-01T00:00:00Z  INFO forged"
        );
        assert_eq!(
            field("x", &format_args!("a\r\u{1b}[31m\u{2028}\u{85}b\tc")),
            "x=a\\r\\u{1b}[31m\\u{2028}\\u{85}b\\tc"
        );
        // A `str` value is quoted (Rust escapes it first).
        assert_eq!(
            field("client_id", &forged),
            "client_id=\"dev\\n2026-01-01T00:00:00Z  INFO forged\""
        );
        // The message is written bare; ordinary text passes unchanged.
        assert_eq!(
            field("message", &format_args!("session closed")),
            "session closed"
        );
        assert_eq!(field("name", &format_args!("Kiosk ✓")), "name=Kiosk ✓");
    }

    #[test]
    fn denials_past_the_budget_are_suppressed_then_summarised() {
        let l = DenialLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..DENIALS_PER_WINDOW {
            assert_eq!(l.check(ip, t0), (true, 0));
        }
        assert_eq!(l.check(ip, t0), (false, 0));
        assert_eq!(l.check(ip, t0), (false, 0));
        // Another address is unaffected.
        assert_eq!(l.check("192.0.2.2".parse().unwrap(), t0), (true, 0));
        assert_eq!(l.check(ip, t0 + WINDOW), (true, 2));
    }

    #[test]
    fn many_addresses_cost_bounded_memory() {
        let l = DenialLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 * 3) {
            l.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
