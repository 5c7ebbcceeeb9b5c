//! A live session: the relay both ways, re-decided on every reload, ended at its
//! identity's validity end, at shutdown, or when one side lingers past the other's close.

use std::time::Duration;

use rustls::pki_types::UnixTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::outcome::Closed;
use super::{Ctx, Lifecycle, Opened, Session};
use crate::auth;
use crate::metrics;
use crate::mqtt::{self, Version};
use crate::transport::relay::{Ended, Relay};
use crate::transport::ClientStream;
use crate::trust::{unix_now, Trust};

/// How long a stopping session may take to reach a broker packet boundary before it is
/// closed without a DISCONNECT.
const BOUNDARY_GRACE: Duration = Duration::from_secs(1);

/// Phase 6: relay both ways until a side closes, re-deciding the session on every reload
/// and ending it when its identity's validity ends (certificate or CA notAfter, the webhook's expiration) or at
/// shutdown.
pub(super) async fn relay_session(ctx: &Ctx, open: &mut Opened) -> Closed {
    let Opened {
        client,
        upstream,
        relay,
        session,
        trust_rx,
        ..
    } = open;
    let version = session.version;
    let mut lifecycle = ctx.lifecycle.clone();
    // One timer for both deadlines a session has: its identity's validity end, and, once
    // one side has closed, the other side's linger (a second `Sleep` is 112 bytes more in
    // every idle session's task).
    let mut valid_until = expiry_instant(session.identity.valid_until);
    let mut linger_until: Option<tokio::time::Instant> = None;
    let timer = tokio::time::sleep_until(valid_until);
    tokio::pin!(timer);

    let stop = loop {
        tokio::select! {
            ended = relay.run(&mut *client, &mut *upstream) => {
                return match ended {
                    Ended::HalfClosed => {
                        let at = tokio::time::Instant::now() + ctx.limits.linger;
                        linger_until = Some(at);
                        timer.as_mut().reset(at.min(valid_until));
                        continue;
                    }
                    Ended::Client => Closed::Client,
                    Ended::Upstream => Closed::Upstream,
                    Ended::Error(_) => Closed::Error,
                };
            }
            changed = trust_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let trust = trust_rx.borrow_and_update().clone();
                match still_allowed(&trust, client, session) {
                    Some(until) => {
                        valid_until = expiry_instant(until);
                        timer.as_mut().reset(linger_until.map_or(valid_until, |l| l.min(valid_until)));
                    }
                    // SPEC §12: counted and logged, the session goes on.
                    None if ctx.audit_only => {
                        super::would_deny(ctx, "revoked", session);
                    }
                    None => break (Closed::Revoked, mqtt::code::V5_ADMINISTRATIVE_ACTION),
                }
            }
            () = &mut timer => {
                if linger_until.is_some_and(|l| l <= tokio::time::Instant::now()) {
                    // The side still open is closed when the session's sockets are dropped.
                    let client_first = relay.first_to_close() == Some(true);
                    let side = if client_first { "upstream" } else { "client" };
                    ctx.metrics.linger_expired.get_or_create(&metrics::Side { side }).inc();
                    return if client_first { Closed::Client } else { Closed::Upstream };
                }
                // The same DISCONNECT whichever method's validity ended (0x98).
                let closed = match session.identity.method {
                    auth::Method::Certificate => Closed::CertificateExpired,
                    auth::Method::Jwt => Closed::TokenExpired,
                    auth::Method::Webhook => Closed::WebhookExpired,
                };
                if ctx.audit_only {
                    super::would_deny(ctx, closed.label(), session);
                    valid_until = expiry_instant(i64::MAX);
                    timer.as_mut().reset(linger_until.unwrap_or(valid_until));
                    continue;
                }
                break (closed, mqtt::code::V5_ADMINISTRATIVE_ACTION);
            }
            changed = lifecycle.changed() => {
                let state = if changed.is_ok() { *lifecycle.borrow_and_update() } else { Lifecycle::Closing };
                match state {
                    Lifecycle::Running => {}
                    Lifecycle::Draining if version != Version::V5 => {}
                    _ => break (Closed::Shutdown, mqtt::code::V5_SERVER_SHUTTING_DOWN),
                }
            }
        }
    };
    let (closed, reason) = stop;
    end_session(relay, client, upstream, version, reason, ctx.limits.linger).await;
    closed
}

/// The first instant past `valid_until` (unix seconds): validity ends after that second.
fn expiry_instant(valid_until: i64) -> tokio::time::Instant {
    // Capped at a century: an Instant far enough out overflows (and "never" needs no more).
    let left = valid_until.saturating_sub(unix_now()).clamp(0, CENTURY) as u64;
    tokio::time::Instant::now() + Duration::from_secs(left + 1)
}

const CENTURY: i64 = 100 * 365 * 86_400;

/// Ends a session mqttgate decided to end: finish the broker packet in flight, tell an
/// MQTT 5 client why, close both sides.
async fn end_session(
    relay: &mut Relay,
    client: &mut ClientStream,
    upstream: &mut TcpStream,
    version: Version,
    reason: u8,
    linger: Duration,
) {
    let at_boundary = matches!(
        timeout(BOUNDARY_GRACE, relay.finish_at_boundary(client, upstream)).await,
        Ok(Ok(()))
    );
    let _ = timeout(linger, async {
        if at_boundary && version == Version::V5 {
            client.write_all(&mqtt::disconnect_v5(reason)).await?;
        }
        client.shutdown().await
    })
    .await;
    let _ = upstream.shutdown().await;
}

/// SPEC §5: is this session still allowed under the new trust state, as the same
/// identity? Its new validity end when it is.
fn still_allowed(trust: &Trust, client: &ClientStream, session: &Session) -> Option<i64> {
    let credentials = session.credentials(client)?;
    let (_, decision) = trust.decide(&credentials, UnixTime::now()).ok()?;
    let id = decision.ok()?;
    auth::same_name(
        &id.authentication_name,
        &session.identity.authentication_name,
    )
    .then_some(id.valid_until)
}
