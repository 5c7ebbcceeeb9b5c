//! The broker side of opening a session: the dial, the CONNECT and pipelined bytes sent,
//! and the broker's CONNACK passed on and counted.

use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use super::outcome::{hex_label, Refused};
use super::session::{Session, SessionAuthz};
use super::Ctx;
use crate::metrics;
use crate::mqtt::{self, Version};
use crate::transport::packet_io::{self, ReadError};
use crate::transport::relay::Relay;
use crate::transport::ClientStream;

/// Phase 4: the TCP connection to the broker, under the dial deadline.
pub(super) async fn dial(ctx: &Ctx) -> Result<TcpStream, String> {
    let started = Instant::now();
    let result = match timeout(ctx.limits.dial_timeout, TcpStream::connect(&ctx.upstream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(("refused", e.to_string())),
        Err(_) => Err(("timeout", "dial timed out".to_string())),
    };
    ctx.metrics
        .dial_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(_) => "ok",
        Err((l, _)) => l,
    };
    ctx.metrics
        .dials
        .get_or_create(&metrics::Result_ { result: label })
        .inc();
    let stream = result.map_err(|(_, e)| e)?;
    // MQTT is request/response with small packets: don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Phase 5: send the broker its CONNECT and the pipelined bytes, then pass its CONNACK on.
pub(super) async fn open_upstream(
    ctx: &Ctx,
    client: &mut ClientStream,
    upstream: &mut TcpStream,
    session: &mut Session,
    relay: &mut Relay,
) -> Result<(), Refused> {
    let first = std::mem::take(&mut session.first_bytes);
    let written = timeout(ctx.limits.dial_timeout, upstream.write_all(&first)).await;
    if !matches!(written, Ok(Ok(()))) {
        return Err(Refused::Upstream(
            session.version,
            "the broker did not take the CONNECT".into(),
        ));
    }
    relay.forwarded_up(&first[session.proxy_len..]);
    drop(first);
    let method = match (&session.jwt, &session.webhook) {
        (Some(j), _) => Some(j.method.as_str()),
        (None, Some(w)) => w.method.as_deref(),
        (None, None) => None,
    };
    // What the client hears that the broker could not say: its method, the ClientId
    // assigned to an empty one, the Session Expiry Interval used (SPEC §10, §13).
    let told = session.told.take();
    let tell = mqtt::ConnackAdditions {
        authentication_method: method,
        assigned_client_id: told.as_ref().and_then(|t| t.assigned_client_id.as_deref()),
        session_expiry: told.as_ref().and_then(|t| t.session_expiry),
    };
    let authz = session.authz.as_deref_mut();
    relay_connack(ctx, client, upstream, session.version, tell, relay, authz).await
}

/// Largest broker CONNACK inspected; a bigger one (v5 with many user properties) is
/// forwarded uncounted.
const MAX_CONNACK: usize = 4096;

/// Phase 5b: wait for the broker's CONNACK, forward it (with anything the broker sent right
/// after it) and count its code. A broker that closes or stalls before answering is an
/// unavailable upstream: the client has heard nothing yet, so it gets a proper CONNACK.
/// A v5 client's CONNACK gains what mqttgate tells it (`tell`).
async fn relay_connack(
    ctx: &Ctx,
    client: &mut ClientStream,
    upstream: &mut TcpStream,
    version: Version,
    tell: mqtt::ConnackAdditions<'_>,
    relay: &mut Relay,
    authz: Option<&mut SessionAuthz>,
) -> Result<(), Refused> {
    let deadline = tokio::time::Instant::now() + ctx.limits.dial_timeout;
    let mut buf = Vec::with_capacity(64);
    // The broker frames its own packets: one whose length does not parse, or that is
    // longer than MAX_CONNACK, is forwarded as it is, uncounted.
    let framed = |b: &[u8]| {
        Ok::<_, std::convert::Infallible>(match mqtt::packet_len(b) {
            Ok(Some(len)) => (b.len() >= len).then_some(()),
            Ok(None) => None,
            Err(_) => Some(()),
        })
    };
    match packet_io::read_packet(upstream, &mut buf, deadline, MAX_CONNACK, framed).await {
        Ok(()) | Err(ReadError::TooLarge { .. }) => {}
        Err(ReadError::Invalid(never)) => match never {},
        Err(ReadError::Closed) => {
            return Err(Refused::Upstream(
                version,
                "broker closed before its CONNACK".into(),
            ))
        }
        Err(ReadError::Io(e)) => return Err(Refused::Upstream(version, e.to_string())),
        Err(ReadError::Timeout) => {
            return Err(Refused::Upstream(
                version,
                "no CONNACK from the broker".into(),
            ))
        }
    }
    if let Some(code) = mqtt::connack_code(&buf) {
        ctx.metrics
            .connacks
            .get_or_create(&metrics::Connack {
                sender: "broker",
                protocol: version.label(),
                code: hex_label(code),
            })
            .inc();
    }
    // Counted as relayed as the broker sent it; the client gets the additions.
    let to_client = match tell.is_empty() || version != Version::V5 {
        true => None,
        false => mqtt::connack_with(&buf, &tell),
    };
    let write = async {
        client
            .write_all(to_client.as_deref().unwrap_or(&buf))
            .await?;
        client.flush().await
    };
    // A client that is gone or stalled here is noticed by the relay, which ends the session.
    let _ = timeout_at(deadline, write).await;
    relay.forwarded_down(&buf);
    if let Some(a) = authz {
        // SPEC §11: the client may set as many topic aliases as the broker allows it;
        // the authorized relay tracks them so none can name an undecided topic.
        a.topic_alias_max = mqtt::client_packets::connack_topic_alias_max(&buf);
        a.down.feed(&buf);
    }
    Ok(())
}
