//! One client connection, start to finish:
//!
//! ```text
//! 1 handshake     mutual TLS under the connect deadline          tls.rs
//! 2 read_connect  buffer until mqtt::parse_connect says complete  mqtt.rs
//! 3 authorize     auth::decide against the current registry       auth.rs
//!                 └ refused → refuse(): CONNACK, close
//! 4 dial          the upstream broker, under its own deadline
//! 5 forward       rewritten CONNECT + pipelined bytes, then relay both ways,
//!                 re-deciding on every reload and closing at certificate expiry
//! 6 record        one outcome for metrics, one "closed" log line
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport::tls_io::TlsConn;
use rustls::pki_types::UnixTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at};
use tracing::debug;

use crate::audit;
use crate::auth::{self, Denial, Identity};
use crate::config::{ClientIdMode, Limits, UsernameMode};
use crate::metrics::{self, Metrics};
use crate::mqtt::{self, Connect, ParseError, Refusal, Version};
use crate::server::slots::{AtAccept, Pending, Slots};
use crate::transport::packet_io::{self, ReadError};
use crate::transport::relay::{Ended, Relay};
use crate::trust::cert::CertInfo;
use crate::trust::verifier::HandshakeFailure;
use crate::trust::{unix_now, Trust, TrustWatch};
use tokio::sync::OwnedSemaphorePermit;

/// How long a stopping session may take to reach a broker packet boundary before it is
/// closed without a DISCONNECT.
const BOUNDARY_GRACE: Duration = Duration::from_secs(1);

/// The server's lifecycle as connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Running,
    /// Stop accepting; MQTT 5 sessions get DISCONNECT 0x8B, others keep flowing.
    Draining,
    /// The drain time is over: close everything.
    Closing,
}

/// What every connection shares.
pub struct Ctx {
    pub limits: Limits,
    pub upstream: String,
    pub username_mode: UsernameMode,
    pub client_id_mode: ClientIdMode,
    pub reason_strings: bool,
    pub trust: TrustWatch,
    pub lifecycle: watch::Receiver<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub denial_log: audit::DenialLimiter,
    pub slots: Arc<Slots>,
}

/// Why a connection was refused after its TLS handshake. Each variant is one metric label.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no complete CONNECT before the deadline")]
    ConnectTimeout { version: Option<Version> },
    #[error("client closed before sending a complete CONNECT")]
    ClientGone,
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The certificate fails the checks repeated after every handshake (a resumed TLS
    /// session skips verification): dates, or a leaf that does not parse.
    #[error("client certificate refused after the handshake: {}", .0.label())]
    Certificate(HandshakeFailure),
    #[error("{}", .0.reason)]
    Denied(Denial, Version),
    #[error("past the connection limit")]
    Busy(Version),
    #[error("upstream broker unavailable: {1}")]
    Upstream(Version, String),
    #[error("read failed: {0}")]
    Io(std::io::Error),
    /// Closed at accept, before any TLS work: past the connection limit and its busy
    /// answers, or past its source address's share of pending slots.
    #[error("closed at accept: {0:?}")]
    AtAccept(AtAccept),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::ConnectTimeout { .. } => "connect_timeout",
            Refused::ClientGone => "client_gone",
            Refused::Parse(ParseError::NotConnect { .. }) => "not_connect",
            Refused::Parse(ParseError::TooLarge { .. }) => "connect_too_large",
            Refused::Parse(ParseError::UnsupportedProtocol { .. }) => "unsupported_protocol",
            Refused::Parse(ParseError::Malformed { .. }) => "malformed",
            Refused::Certificate(f) => f.label(),
            Refused::Denied(..) => "denied",
            Refused::Busy(_) => "busy",
            Refused::Upstream(..) => "upstream_unavailable",
            Refused::Io(_) => "io",
            Refused::AtAccept(AtAccept::OverLimit) => "over_limit",
            Refused::AtAccept(AtAccept::SourceOverLimit) => "source_pending_limit",
        }
    }

    /// The v5 Reason String, when enabled: one fixed text per refusal class, so a client
    /// learns nothing about why it was denied (no registry enumeration).
    fn client_text(&self) -> &'static str {
        match self {
            Refused::Denied(..) => "not authorized",
            Refused::Busy(_) => "server busy",
            Refused::Upstream(..) => "server unavailable",
            Refused::Parse(ParseError::TooLarge { .. }) => "packet too large",
            Refused::Parse(_) | Refused::ConnectTimeout { .. } => "malformed packet",
            Refused::ClientGone
            | Refused::Certificate(_)
            | Refused::Io(_)
            | Refused::AtAccept(_) => "",
        }
    }

    /// SPEC §3: which refusal the client hears, in its own protocol version.
    fn answer(&self) -> (Option<Refusal>, Option<Version>) {
        match self {
            Refused::ConnectTimeout { version } => (Some(Refusal::Malformed), *version),
            Refused::Parse(e) => (Some(e.refusal()), e.version()),
            Refused::Denied(_, v) => (Some(Refusal::NotAuthorized), Some(*v)),
            Refused::Busy(v) => (Some(Refusal::ServerBusy), Some(*v)),
            Refused::Upstream(v, _) => (Some(Refusal::ServerUnavailable), Some(*v)),
            Refused::ClientGone
            | Refused::Certificate(_)
            | Refused::Io(_)
            | Refused::AtAccept(_) => (None, None),
        }
    }
}

/// Why a proxied session ended; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    Client,
    Upstream,
    Revoked,
    CertificateExpired,
    Shutdown,
    Error,
}

impl Closed {
    pub fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::Upstream => "upstream",
            Closed::Revoked => "revoked",
            Closed::CertificateExpired => "certificate_expired",
            Closed::Shutdown => "shutdown",
            Closed::Error => "error",
        }
    }
}

/// What was decided about an admitted client, kept for the life of the session. The
/// certificate itself stays in rustls (which keeps the peer chain anyway) and is admitted
/// again only when a reload asks for a new decision.
struct Session {
    version: Version,
    /// The CONNECT username, needed to re-decide on reload.
    username: Option<String>,
    identity: Identity,
    /// The CONNECT for the broker followed by the bytes the client pipelined after its
    /// own, in order; emptied once sent.
    first_bytes: Vec<u8>,
}

/// How an accepted TCP connection ended. Every connection ends in exactly one, recorded
/// once by [`record`]: one metric increment and one audit line (SPEC §7).
#[derive(Debug)]
pub enum Outcome {
    /// The TLS handshake failed or did not finish before the deadline.
    TlsFailed(HandshakeFailure),
    /// Refused after the handshake (answered with a CONNACK where SPEC §3 gives one).
    Refused(Refused),
    /// A proxied session ended.
    Session {
        closed: Closed,
        name: String,
        bytes: (u64, u64),
    },
}

impl Outcome {
    /// `(outcome, reason)` metric labels.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::TlsFailed(f) => ("tls_failure", f.label()),
            Outcome::Refused(r) => ("refused", r.label()),
            Outcome::Session { closed, .. } => ("session", closed.label()),
        }
    }
}

/// Serves one accepted TCP connection to its end and records how it ended.
pub async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr, pending: Pending) {
    let accepted = Instant::now();
    // Phases 1 to 5 run in a boxed future of their own that is freed before the session
    // starts: a task's allocation is as large as its largest state, and the handshake's
    // state is far larger than the relay's. Idle sessions are most of a server's life
    // (measured with -Zprint-type-sizes: the task future of a session went from 3,336 to
    // 2,248 bytes).
    let opened = Box::pin(open_session(&ctx, tcp, peer, accepted)).await;
    // The session holds a session slot from here on; its pending slot is free again.
    drop(pending);
    let outcome = match opened {
        Ok(mut open) => {
            let closed = relay_session(&ctx, &mut open).await;
            Outcome::Session {
                closed,
                name: std::mem::take(&mut open.session.identity.authentication_name),
                bytes: open.relay.bytes(),
            }
        }
        Err(outcome) => outcome,
    };
    record(&ctx, peer, accepted, &outcome);
}

/// Records how a connection ended: the one place that counts closes and writes the
/// audit line, so logs and metrics never disagree.
pub fn record(ctx: &Ctx, peer: SocketAddr, accepted: Instant, outcome: &Outcome) {
    let (kind, reason) = outcome.labels();
    ctx.metrics
        .closed
        .get_or_create(&metrics::Close {
            outcome: kind,
            reason,
        })
        .inc();
    let (name, bytes) = match outcome {
        Outcome::Session { name, bytes, .. } => (name.as_str(), *bytes),
        // Whatever a refused or failed peer retries is rate-limited in the log.
        _ if !ctx.denial_log.check(peer.ip(), std::time::Instant::now()).0 => return,
        _ => ("", (0, 0)),
    };
    audit::closed(peer, kind, reason, name, bytes, accepted.elapsed());
}

/// What a session needs once the broker has accepted it.
struct Opened {
    tls: TlsConn,
    upstream: TcpStream,
    relay: Relay,
    session: Session,
    /// The trust state this session was last decided against is the one marked seen.
    trust_rx: TrustWatch,
    _slot: OwnedSemaphorePermit,
}

/// Phases 1 to 5: handshake, CONNECT, decision, dial, the broker's CONNACK passed on. On
/// refusal or failure, the client has been answered and the outcome is returned.
async fn open_session(
    ctx: &Ctx,
    tcp: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
) -> Result<Opened, Outcome> {
    let deadline = tokio::time::Instant::from_std(accepted + ctx.limits.connect_timeout);
    let mut tls = handshake(ctx, tcp, peer, deadline, accepted)
        .await
        .map_err(Outcome::TlsFailed)?;
    let mut trust_rx = ctx.trust.clone();
    match admit_and_dial(ctx, &mut tls, &mut trust_rx, peer, deadline).await {
        Ok((session, upstream, slot)) => {
            let mut opened = Opened {
                tls,
                upstream,
                relay: Relay::with_counters(ctx.metrics.up_bytes(), ctx.metrics.down_bytes()),
                session,
                trust_rx,
                _slot: slot,
            };
            let o = &mut opened;
            if let Err(refused) = open_upstream(
                ctx,
                &mut o.tls,
                &mut o.upstream,
                &mut o.session,
                &mut o.relay,
            )
            .await
            {
                refuse(ctx, &mut opened.tls, &refused, peer, accepted).await;
                return Err(Outcome::Refused(refused));
            }
            ctx.metrics
                .accept_to_decision_seconds
                .get_or_create(&metrics::Outcome {
                    outcome: "connack_forwarded",
                })
                .observe(accepted.elapsed().as_secs_f64());
            Ok(opened)
        }
        Err(refused) => {
            refuse(ctx, &mut tls, &refused, peer, accepted).await;
            Err(Outcome::Refused(refused))
        }
    }
}

/// Phase 1: the TLS handshake under the connect deadline, with the configuration (and so
/// the verifier) of the trust state current at accept. The decision after CONNECT
/// re-admits the certificate against the state current then.
async fn handshake(
    ctx: &Ctx,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    accepted: Instant,
) -> Result<TlsConn, HandshakeFailure> {
    let config = ctx.trust.borrow().server_config.clone();
    let result = match timeout_at(deadline, TlsConn::accept(config, tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(HandshakeFailure::classify(&e)),
        Err(_) => Err(HandshakeFailure::Timeout),
    };
    let m = &ctx.metrics;
    let (result_label, reason) = match &result {
        Ok(_) => {
            m.handshake_seconds
                .observe(accepted.elapsed().as_secs_f64());
            ("ok", "")
        }
        Err(failure) => {
            debug!(%peer, reason = failure.label(), "tls handshake failed");
            ("failed", failure.label())
        }
    };
    m.handshakes
        .get_or_create(&metrics::ResultReason {
            result: result_label,
            reason,
        })
        .inc();
    result
}

/// Phases 2 to 4: read the CONNECT, decide against the newest trust state, dial the
/// broker, and decide again if the state changed meanwhile, so that nothing reaches the
/// broker on a decision a reload has overtaken (SPEC §7). The receiver is left marking the
/// state of the final decision as seen: any later reload re-decides the live session.
async fn admit_and_dial(
    ctx: &Ctx,
    tls: &mut TlsConn,
    trust_rx: &mut TrustWatch,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<(Session, TcpStream, OwnedSemaphorePermit), Refused> {
    let (connect, pipelined) = read_connect(tls, deadline, ctx.limits.max_connect_bytes).await?;
    let version = connect.version;
    // Busy before the decision: a client past the limit learns nothing about the registry.
    let slot = ctx.slots.session().ok_or(Refused::Busy(version))?;
    let mut identity = decide(
        ctx,
        &trust_rx.borrow_and_update(),
        tls,
        &connect,
        peer,
        false,
    )?;
    let upstream = dial(ctx).await.map_err(|e| Refused::Upstream(version, e))?;
    // No await from here until the first byte is written upstream.
    if trust_rx.has_changed().unwrap_or(false) {
        identity = decide(
            ctx,
            &trust_rx.borrow_and_update(),
            tls,
            &connect,
            peer,
            true,
        )?;
    }
    let first = upstream_connect(&connect, &identity, ctx.username_mode, ctx.client_id_mode);
    // A rewrite can grow a field past what MQTT allows (a per-identity client id).
    let mut first_bytes = first.encode().map_err(|_| {
        Refused::Parse(ParseError::Malformed {
            version: Some(version),
            reason: "rewritten connect does not fit mqtt's field lengths",
        })
    })?;
    first_bytes.extend_from_slice(&pipelined);
    Ok((
        Session {
            version,
            username: connect.username,
            identity,
            first_bytes,
        },
        upstream,
        slot,
    ))
}

/// Phase 3: the decision (`Trust::decide`: the certificate admitted again, then the
/// registry), recorded in the audit log and metrics. `again` marks a second decision
/// after a reload overtook the first; each is logged as the decision it was.
fn decide(
    ctx: &Ctx,
    trust: &Trust,
    tls: &TlsConn,
    connect: &Connect,
    peer: SocketAddr,
    again: bool,
) -> Result<Identity, Refused> {
    let chain = tls
        .peer_certificates()
        .ok_or(Refused::Certificate(HandshakeFailure::NoCertificate))?;
    let (admitted, decision) = trust
        .decide(chain, connect.username.as_deref(), UnixTime::now())
        .map_err(|f| Refused::Certificate(f.0))?;
    let info = &admitted.leaf;
    if !again {
        ctx.metrics
            .client_cert_days
            .observe((info.not_after - unix_now()) as f64 / 86_400.0);
    }
    let facts = audit::TlsFacts {
        version: tls
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: tls
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
    };
    record_decision(ctx, &decision, info, connect, peer, &facts);
    decision.map_err(|denial| Refused::Denied(denial, connect.version))
}

fn record_decision(
    ctx: &Ctx,
    decision: &Result<Identity, Denial>,
    cert: &CertInfo,
    connect: &Connect,
    peer: SocketAddr,
    tls: &audit::TlsFacts,
) {
    let labels = match decision {
        Ok(id) => ("allowed", "", id.scheme.label(), id.source.label()),
        Err(d) => (
            "denied",
            d.reason.label(),
            d.scheme.map(|s| s.label()).unwrap_or(""),
            d.source.map(|s| s.label()).unwrap_or(""),
        ),
    };
    ctx.metrics
        .decisions
        .get_or_create(&metrics::Decision {
            result: labels.0,
            reason: labels.1,
            scheme: labels.2,
            source: labels.3,
        })
        .inc();
    audit::decision(&ctx.denial_log, decision, cert, connect, peer, tls, labels);
}

/// Phase 2: buffers exactly the first packet, bounded by `max` bytes and the deadline.
/// Returns the CONNECT and any bytes the client pipelined after it.
async fn read_connect(
    tls: &mut TlsConn,
    deadline: tokio::time::Instant,
    max: usize,
) -> Result<(Connect, Vec<u8>), Refused> {
    // Most CONNECTs fit in a few hundred bytes; grow only when the header says so.
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let read = packet_io::read_packet(tls, &mut buf, deadline, max, |b| {
        mqtt::parse_connect(b, max)
    })
    .await;
    match read {
        Ok((connect, len)) => {
            let pipelined = buf.split_off(len);
            Ok((connect, pipelined))
        }
        Err(ReadError::Invalid(e)) => Err(Refused::Parse(e)),
        Err(ReadError::Closed) => Err(Refused::ClientGone),
        Err(ReadError::Io(e)) => Err(Refused::Io(e)),
        Err(ReadError::Timeout) => Err(Refused::ConnectTimeout {
            version: mqtt::peek_version(&buf),
        }),
        // parse_connect refuses an oversized CONNECT itself, before `max` bytes are in.
        Err(ReadError::TooLarge { max }) => Err(Refused::Parse(ParseError::TooLarge {
            len: buf.len(),
            max,
            version: mqtt::peek_version(&buf),
        })),
    }
}

/// Answers a refusal with the CONNACK SPEC §3 gives it (if any) and closes; `record`
/// counts it.
async fn refuse(
    ctx: &Ctx,
    tls: &mut TlsConn,
    refused: &Refused,
    peer: SocketAddr,
    accepted: Instant,
) {
    let (refusal, version) = refused.answer();
    debug!(%peer, reason = refused.label(), error = %refused, "refused");
    if let Some(bytes) = refusal.and_then(|r| {
        let reason = ctx.reason_strings.then(|| refused.client_text());
        r.connack(version, reason)
    }) {
        let code = mqtt::connack_code(&bytes).expect("mqttgate's own CONNACKs are well framed");
        let protocol = match version {
            Some(v) if bytes.len() > 4 => v.label(),
            Some(Version::V5) | None => "3.1.1",
            Some(v) => v.label(),
        };
        ctx.metrics
            .connacks
            .get_or_create(&metrics::Connack {
                sender: "mqttgate",
                protocol,
                code: hex_label(code),
            })
            .inc();
        // The client may have stopped reading; a refusal never waits on it for long.
        let _ = timeout(Duration::from_secs(1), async {
            tls.write_all(&bytes).await?;
            tls.shutdown().await
        })
        .await;
    } else {
        let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
    ctx.metrics
        .accept_to_decision_seconds
        .get_or_create(&metrics::Outcome { outcome: "refused" })
        .observe(accepted.elapsed().as_secs_f64());
}

/// Metric label for a CONNACK code: "0x00".."0xff". A u8 has 256 values, so the label
/// set stays bounded whatever a peer sends.
fn hex_label(code: u8) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    LABELS.get_or_init(|| {
        (0..=255u8)
            .map(|c| &*Box::leak(format!("0x{c:02x}").into_boxed_str()))
            .collect()
    })[usize::from(code)]
}

/// Phase 4: the TCP connection to the broker, under the dial deadline.
async fn dial(ctx: &Ctx) -> Result<TcpStream, String> {
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

/// SPEC §4: the CONNECT the broker sees.
pub fn upstream_connect(
    connect: &Connect,
    identity: &Identity,
    username: UsernameMode,
    client_id: ClientIdMode,
) -> Connect {
    let mut c = connect.clone();
    if username == UsernameMode::Rewrite {
        c.username = Some(identity.authentication_name.clone());
        c.password = None;
    }
    match client_id {
        ClientIdMode::AuthenticationName => {
            c.client_id = identity.authentication_name.clone();
        }
        ClientIdMode::Passthrough => {}
        ClientIdMode::PerIdentity => {
            c.client_id = per_identity_client_id(&identity.authentication_name, &connect.client_id);
        }
    }
    c
}

/// An injective encoding of (authentication name, client id): the name has '%' and '/'
/// percent-escaped, so the first '/' always ends it.
pub fn per_identity_client_id(name: &str, client_id: &str) -> String {
    let mut out = String::with_capacity(name.len() + client_id.len() + 1);
    for ch in name.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out.push_str(client_id);
    out
}

/// Phase 5: send the broker its CONNECT and the pipelined bytes, then pass its CONNACK on.
async fn open_upstream(
    ctx: &Ctx,
    tls: &mut TlsConn,
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
    relay.forwarded_up(&first);
    drop(first);
    relay_connack(ctx, tls, upstream, session.version, relay).await
}

/// Phase 6: relay both ways until a side closes, re-deciding the session on every reload
/// and ending it when its identity's validity ends (certificate or CA notAfter) or at
/// shutdown.
async fn relay_session(ctx: &Ctx, open: &mut Opened) -> Closed {
    let Opened {
        tls,
        upstream,
        relay,
        session,
        trust_rx,
        ..
    } = open;
    let version = session.version;
    let mut lifecycle = ctx.lifecycle.clone();
    let expiry = tokio::time::sleep_until(expiry_instant(session.identity.valid_until));
    tokio::pin!(expiry);
    // Armed once one side has closed: the other side gets `limits.linger` to close too.
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let mut lingering = false;

    let stop = loop {
        tokio::select! {
            ended = relay.run(&mut *tls, &mut *upstream) => {
                return match ended {
                    Ended::HalfClosed => {
                        linger.as_mut().reset(tokio::time::Instant::now() + ctx.limits.linger);
                        lingering = true;
                        continue;
                    }
                    Ended::Client => Closed::Client,
                    Ended::Upstream => Closed::Upstream,
                    Ended::Error(_) => Closed::Error,
                };
            }
            _ = &mut linger, if lingering => {
                // The side still open is closed when the session's sockets are dropped.
                let client_first = relay.first_to_close() == Some(true);
                let side = if client_first { "upstream" } else { "client" };
                ctx.metrics.linger_expired.get_or_create(&metrics::Side { side }).inc();
                return if client_first { Closed::Client } else { Closed::Upstream };
            }
            changed = trust_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let trust = trust_rx.borrow_and_update().clone();
                match still_allowed(&trust, tls, session) {
                    Some(valid_until) => expiry.as_mut().reset(expiry_instant(valid_until)),
                    None => break (Closed::Revoked, mqtt::code::V5_ADMINISTRATIVE_ACTION),
                }
            }
            _ = &mut expiry => break (Closed::CertificateExpired, mqtt::code::V5_ADMINISTRATIVE_ACTION),
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
    end_session(relay, tls, upstream, version, reason, ctx.limits.linger).await;
    closed
}

/// The first instant past `valid_until` (unix seconds): validity ends after that second.
fn expiry_instant(valid_until: i64) -> tokio::time::Instant {
    let left = valid_until.saturating_sub(unix_now()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_secs(left + 1)
}

/// Largest broker CONNACK inspected; a bigger one (v5 with many user properties) is
/// forwarded uncounted.
const MAX_CONNACK: usize = 4096;

/// Phase 5b: wait for the broker's CONNACK, forward it (with anything the broker sent right
/// after it) and count its code. A broker that closes or stalls before answering is an
/// unavailable upstream: the client has heard nothing yet, so it gets a proper CONNACK.
async fn relay_connack(
    ctx: &Ctx,
    tls: &mut TlsConn,
    upstream: &mut TcpStream,
    version: Version,
    relay: &mut Relay,
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
    let write = async {
        tls.write_all(&buf).await?;
        tls.flush().await
    };
    // A client that is gone or stalled here is noticed by the relay, which ends the session.
    let _ = timeout_at(deadline, write).await;
    relay.forwarded_down(&buf);
    Ok(())
}

/// Ends a session mqttgate decided to end: finish the broker packet in flight, tell an
/// MQTT 5 client why, close both sides.
async fn end_session(
    relay: &mut Relay,
    tls: &mut TlsConn,
    upstream: &mut TcpStream,
    version: Version,
    reason: u8,
    linger: Duration,
) {
    let at_boundary = matches!(
        timeout(BOUNDARY_GRACE, relay.finish_at_boundary(tls, upstream)).await,
        Ok(Ok(()))
    );
    let _ = timeout(linger, async {
        if at_boundary && version == Version::V5 {
            tls.write_all(&mqtt::disconnect_v5(reason)).await?;
        }
        tls.shutdown().await
    })
    .await;
    let _ = upstream.shutdown().await;
}

/// SPEC §5: is this session still allowed under the new trust state, as the same
/// identity? Its new validity end when it is.
fn still_allowed(trust: &Trust, tls: &TlsConn, session: &Session) -> Option<i64> {
    let chain = tls.peer_certificates()?;
    let (_, decision) = trust
        .decide(chain, session.username.as_deref(), UnixTime::now())
        .ok()?;
    let id = decision.ok()?;
    auth::same_name(
        &id.authentication_name,
        &session.identity.authentication_name,
    )
    .then_some(id.valid_until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IdentitySource;
    use crate::trust::registry::Scheme;

    fn identity(name: &str) -> Identity {
        Identity {
            authentication_name: name.into(),
            client_name: name.into(),
            scheme: Scheme::SubjectMatchesAuthenticationName,
            source: IdentitySource::Username,
            valid_until: i64::MAX,
        }
    }

    fn connect() -> Connect {
        Connect {
            version: Version::V311,
            clean_start: true,
            keep_alive: 60,
            properties: vec![],
            client_id: "device-chosen".into(),
            will: None,
            username: Some("sensor-17".into()),
            password: Some(b"secret".to_vec()),
        }
    }

    #[test]
    fn rewrite_sets_username_and_client_id_and_drops_password() {
        let c = upstream_connect(
            &connect(),
            &identity("Sensor-17"),
            UsernameMode::Rewrite,
            ClientIdMode::AuthenticationName,
        );
        assert_eq!(c.username.as_deref(), Some("Sensor-17"));
        assert_eq!(c.password, None);
        assert_eq!(c.client_id, "Sensor-17");
        assert_eq!(c.keep_alive, 60);
    }

    #[test]
    fn passthrough_keeps_what_the_client_sent() {
        let c = upstream_connect(
            &connect(),
            &identity("sensor-17"),
            UsernameMode::Passthrough,
            ClientIdMode::Passthrough,
        );
        assert_eq!(c, connect());
    }

    #[test]
    fn per_identity_client_ids_never_collide() {
        assert_eq!(per_identity_client_id("a", "b/c"), "a/b/c");
        assert_ne!(
            per_identity_client_id("a/b", "c"),
            per_identity_client_id("a", "b/c")
        );
        assert_eq!(per_identity_client_id("a/b", "c"), "a%2Fb/c");
        assert_ne!(
            per_identity_client_id("a%2Fb", "c"),
            per_identity_client_id("a/b", "c")
        );
    }

    #[test]
    fn every_refusal_maps_to_the_spec_table() {
        let denial = Denial {
            reason: auth::Denied::UnknownClient,
            name: None,
            source: None,
            scheme: None,
        };
        let cases: Vec<(Refused, Option<Vec<u8>>)> = vec![
            (
                Refused::Denied(denial.clone(), Version::V5),
                Some(vec![0x20, 3, 0, 0x87, 0]),
            ),
            (
                Refused::Denied(denial, Version::V311),
                Some(vec![0x20, 2, 0, 0x05]),
            ),
            (
                Refused::Upstream(Version::V5, "x".into()),
                Some(vec![0x20, 3, 0, 0x88, 0]),
            ),
            (
                Refused::Upstream(Version::V31, "x".into()),
                Some(vec![0x20, 2, 0, 0x03]),
            ),
            (Refused::Busy(Version::V5), Some(vec![0x20, 3, 0, 0x89, 0])),
            (Refused::Busy(Version::V311), Some(vec![0x20, 2, 0, 0x03])),
            (
                Refused::Parse(ParseError::TooLarge {
                    len: 1,
                    max: 0,
                    version: Some(Version::V5),
                }),
                Some(vec![0x20, 3, 0, 0x95, 0]),
            ),
            (
                Refused::Parse(ParseError::TooLarge {
                    len: 1,
                    max: 0,
                    version: Some(Version::V311),
                }),
                None,
            ),
            (
                Refused::Parse(ParseError::UnsupportedProtocol { level: 6 }),
                Some(vec![0x20, 2, 0, 0x01]),
            ),
            (
                Refused::Parse(ParseError::Malformed {
                    version: Some(Version::V5),
                    reason: "x",
                }),
                Some(vec![0x20, 3, 0, 0x81, 0]),
            ),
            (
                Refused::Parse(ParseError::Malformed {
                    version: Some(Version::V311),
                    reason: "x",
                }),
                None,
            ),
            (
                Refused::Parse(ParseError::NotConnect { packet_type: 3 }),
                None,
            ),
            (Refused::ConnectTimeout { version: None }, None),
            (
                Refused::ConnectTimeout {
                    version: Some(Version::V5),
                },
                Some(vec![0x20, 3, 0, 0x81, 0]),
            ),
        ];
        for (refused, want) in cases {
            let (r, v) = refused.answer();
            assert_eq!(r.and_then(|r| r.connack(v, None)), want, "{refused:?}");
        }
    }
}
