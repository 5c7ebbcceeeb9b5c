//! The audit log: one event per authentication decision and one per closed session, on
//! the `mqttgate::audit` tracing target. Denials from one peer address are rate-limited
//! in the log (metrics count every one), so a misconfigured device retrying in a loop
//! can't flood the log. Passwords are never logged: no event takes the CONNECT password.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::auth::{Denial, Identity};
use crate::cert::CertInfo;
use crate::mqtt::Connect;

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
    decision: &Result<Identity, Denial>,
    cert: &CertInfo,
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
    info!(
        target: "mqttgate::audit",
        event = "decision",
        result,
        reason,
        %peer,
        client_id = %connect.client_id,
        authentication_name = name.unwrap_or(""),
        source,
        scheme,
        subject = %cert.subject_dn,
        dns = ?cert.dns,
        uris = ?cert.uris,
        emails = ?cert.emails,
        ips = ?cert.ips,
        thumbprint = %cert.thumbprint,
        issuer = %cert.issuer_dn,
        serial = %cert.serial_hex,
        tls_version = %tls.version,
        cipher = %tls.cipher,
        mqtt = connect.version.label(),
        "authentication decision"
    );
}

/// One line per accepted connection, however it ended (`outcome`: tls_failure, refused
/// or session).
pub fn closed(
    peer: SocketAddr,
    outcome: &str,
    reason: &str,
    name: &str,
    bytes: (u64, u64),
    duration: Duration,
) {
    info!(
        target: "mqttgate::audit",
        event = "closed",
        %peer,
        outcome,
        authentication_name = %name,
        reason,
        bytes_to_broker = bytes.0,
        bytes_to_client = bytes.1,
        duration_ms = duration.as_millis() as u64,
        "connection closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
