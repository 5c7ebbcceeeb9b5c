//! One client connection, start to finish. [`serve`] reads like SPEC's path, one function
//! per phase:
//!
//! ```text
//! 0 serve_proxied  on a PROXY-protocol listener: the v2 header names the client   (here)
//! 1 handshake      TLS under the connect deadline; the verifier is trust::admit   (here)
//!   upgrade        on the WebSocket listener: HTTP/1.1 Upgrade, same deadline    (here)
//! 2 read_connect   buffer until the codec says the CONNECT is complete        decide.rs
//!   ask_webhook    the clients the webhook decides (SPEC §9): its answer      decide.rs,
//!                                                                             webhook.rs
//! 3 decide         Trust::decide against the newest trust state: admit + auth decide.rs
//!                  └ refused → outcome::refuse: CONNACK, close
//!   claim_session  sessions per authentication name, connect rate (SPEC §10) decide.rs
//! 4 dial           the broker, under its own deadline; decide again on a reload    upstream.rs
//! 5 open_upstream  the rewritten CONNECT (auth::rewrite) + pipelined bytes, then
//!                  the broker's CONNACK passed on                                   upstream.rs
//! 6 relay_session  both ways; re-decided on reload; expiry, linger, drain          session.rs
//!                  under [authorization]: client packets decided (SPEC §11)   authorize.rs,
//!                  JWT sessions: AUTH re-authentication (SPEC §9)  authorized_relay.rs,
//!                                                                             reauth.rs
//! 7 record         one outcome per connection: one metric, one audit line          outcome.rs
//! ```

mod authorize;
mod authorized_relay;
mod decide;
mod outcome;
mod reauth;
mod session;
mod upstream;
mod webhook;

pub use self::outcome::{record, Closed, Outcome, ProxyRefusal, Refused};
pub use self::webhook::{Webhook, WebhookFailure};

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::timeout_at;
use tracing::debug;

use self::authorize::{Authorizer, Counters};
use self::authorized_relay::AuthorizedRelay;
use self::decide::{claim_session, decide, decide_at_connect, read_connect, Asked};
use self::outcome::refuse;
use self::session::{relay_session, JwtSession, Session, SessionAuthz, Told, WebhookSession};
use self::upstream::{dial, open_upstream};
use crate::audit;
use crate::auth::grant::{self, Grant};
use crate::config::{AuthzMode, Limits};
use crate::metrics::{self, Metrics};
use crate::mqtt::{ParseError, Version};
use crate::server::sessions::Sessions;
use crate::server::slots::{Pending, Slots};
use crate::transport::relay::Relay;
use crate::transport::tls_io::TlsConn;
use crate::transport::ws::{self, UpgradeRefusal, UpgradeRules};
use crate::transport::{proxy, ClientStream, Peer, Transport};
use crate::trust::verifier::HandshakeFailure;
use crate::trust::TrustWatch;
use tokio::io::AsyncReadExt;

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
    /// What every grant is computed from: the effective `[upstream]` modes (audit mode's
    /// overrides applied once, in `config`), the PROXY v2 header, the session expiry cap.
    pub upstream_policy: grant::Upstream,
    pub reason_strings: bool,
    /// The WebSocket listener's upgrade rules, when it is configured.
    pub websocket: Option<UpgradeRules>,
    pub trust: TrustWatch,
    pub lifecycle: watch::Receiver<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub denial_log: audit::DenialLimiter,
    pub slots: Arc<Slots>,
    /// SPEC §10: the sessions each authentication name holds, and their connect rate.
    pub sessions: Arc<Sessions>,
    /// SPEC §12: decisions are recorded, never enforced (`mode = "audit"`).
    pub audit_only: bool,
    /// `[authorization] mode`, when topic-space authorization is configured.
    pub authz_mode: Option<AuthzMode>,
    /// `[auth.webhook]`: the client that asks it, shared by every connection.
    pub webhook: Option<Webhook>,
}

/// Serves one accepted TCP connection to its end and records how it ended.
pub fn serve(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    peer: Peer,
    pending: Pending,
    accepted: Instant,
) -> impl std::future::Future<Output = ()> + Send {
    // Phases 1 to 5 run in a boxed future of their own that is freed before the session
    // starts: a task's allocation is as large as its largest state, and the handshake's
    // state is far larger than the relay's. Idle sessions are most of a server's life.
    // Boxed here, before the task's future exists, so the socket and the pending slot it
    // takes are never room in the task: 96 bytes less per session (this and the figures
    // below measured with -Zprint-type-sizes).
    let active = Active::enter(ctx.metrics.clone());
    let opening = Box::pin(open_session_owned(
        ctx.clone(),
        tcp,
        peer,
        pending,
        accepted,
    ));
    // An async block, not an async fn: an async fn keeps a second copy of each argument
    // for the whole task (the peer's 100 bytes twice in every idle session); a block
    // uses its captures in place.
    async move {
        let _active = active;
        // The match's scrutinee is a temporary, dead once `open` is bound: with a named
        // `Result` local the task kept room for a second `Opened` (1,568 bytes) for the whole
        // session (4,064 bytes per task instead of 2,500).
        let mut open = match opening.await {
            Ok(open) => open,
            Err(outcome) => return record(&ctx, peer, accepted, &outcome),
        };
        let closed = relay_session(&ctx, &mut open).await;
        let bytes = match &open.authorized {
            None => open.relay.bytes(),
            Some(a) => {
                let ((u0, d0), (u1, d1)) = (open.relay.bytes(), a.bytes());
                (u0 + u1, d0 + d1)
            }
        };
        let outcome = Outcome::Session {
            closed,
            name: std::mem::take(&mut open.session.identity.authentication_name),
            bytes,
        };
        record(&ctx, peer, accepted, &outcome);
    }
}

/// Phases 1 to 5 with what they own; the pending slot is given back when they end, so an
/// admitted session holds its session slot only.
async fn open_session_owned(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    peer: Peer,
    pending: Pending,
    accepted: Instant,
) -> Result<Opened, Outcome> {
    let opened = pending.watch(open_session(&ctx, tcp, peer, accepted)).await;
    let opened = opened.unwrap_or_else(|shed| Err(Outcome::Refused(Refused::AtAccept(shed))));
    drop(pending);
    opened
}

/// Largest PROXY v2 header taken from a load balancer: the addresses and a few TLVs
/// (HAProxy's are well under 300 bytes); a longer one is refused before it is buffered.
const MAX_PROXY_HEADER: usize = 1024;

/// Phase 0 on a listener with `proxy_protocol = "required"` (SPEC §8): the PROXY v2 header,
/// read before TLS within the connect deadline, names the client; then its address takes
/// its pending slot and the connection is served like any other.
pub async fn serve_proxied(
    ctx: Arc<Ctx>,
    mut tcp: TcpStream,
    proxy: Peer,
    permit: OwnedSemaphorePermit,
    accepted: Instant,
) {
    let deadline = tokio::time::Instant::from_std(accepted + ctx.limits.connect_timeout);
    let peer = match timeout_at(deadline, read_proxy_header(&mut tcp)).await {
        Ok(Ok(proxy::Header::Proxied {
            source,
            destination,
        })) => Peer {
            addr: source,
            transport: proxy.transport,
            local: destination,
            via: Some(proxy.addr),
        },
        // The load balancer's own connection (a health check): served as itself.
        Ok(Ok(proxy::Header::Local)) => proxy,
        Ok(Err(why)) => {
            return record(
                &ctx,
                proxy,
                accepted,
                &Outcome::Refused(Refused::Proxy(why)),
            );
        }
        Err(_) => {
            let outcome = Outcome::Refused(Refused::Proxy(ProxyRefusal::Timeout));
            return record(&ctx, proxy, accepted, &outcome);
        }
    };
    match ctx.slots.admit(permit, peer.ip()) {
        Ok(pending) => serve(ctx, tcp, peer, pending, accepted).await,
        Err(why) => record(
            &ctx,
            peer,
            accepted,
            &Outcome::Refused(Refused::AtAccept(why)),
        ),
    }
}

/// Reads exactly one PROXY v2 header: never a byte of the TLS handshake after it.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<proxy::Header, ProxyRefusal> {
    let mut buf = [0u8; MAX_PROXY_HEADER];
    let prefix = &mut buf[..proxy::PREFIX_LEN];
    tcp.read_exact(prefix)
        .await
        .map_err(|_| ProxyRefusal::Malformed)?;
    let len = match proxy::header_len(prefix, MAX_PROXY_HEADER) {
        Ok(Some(len)) => len,
        _ => return Err(ProxyRefusal::Malformed),
    };
    tcp.read_exact(&mut buf[proxy::PREFIX_LEN..len])
        .await
        .map_err(|_| ProxyRefusal::Malformed)?;
    match proxy::parse(&buf[..len], MAX_PROXY_HEADER) {
        Ok(Some((header, _))) => Ok(header),
        _ => Err(ProxyRefusal::Malformed),
    }
}

/// Counts a connection in `mqttgate_connections_active` for as long as it is served.
struct Active(Arc<Metrics>);

impl Active {
    fn enter(metrics: Arc<Metrics>) -> Active {
        metrics.active.inc();
        Active(metrics)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// What a session needs once the broker has accepted it.
struct Opened {
    client: ClientStream,
    upstream: TcpStream,
    relay: Relay,
    /// Under `[authorization]`, the relay the session runs instead of `relay` (which then
    /// only counted the CONNECT and CONNACK).
    authorized: Option<Box<AuthorizedRelay>>,
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
    peer: Peer,
    accepted: Instant,
) -> Result<Opened, Outcome> {
    let deadline = tokio::time::Instant::from_std(accepted + ctx.limits.connect_timeout);
    let tls = handshake(ctx, tcp, peer, deadline, accepted)
        .await
        .map_err(Outcome::TlsFailed)?;
    let mut client = match (peer.transport, &ctx.websocket) {
        (Transport::WebSocket, Some(rules)) => upgrade(tls, rules, deadline)
            .await
            .map_err(|r| Outcome::Refused(Refused::Upgrade(r)))?,
        _ => ClientStream::Tls(tls),
    };
    let mut trust_rx = ctx.trust.clone();
    match admit_and_dial(ctx, &mut client, &mut trust_rx, peer, deadline).await {
        Ok((session, upstream, slot)) => {
            let mut opened = Opened {
                client,
                upstream,
                relay: Relay::with_counters(ctx.metrics.up_bytes(), ctx.metrics.down_bytes()),
                authorized: None,
                session,
                trust_rx,
                _slot: slot,
            };
            let o = &mut opened;
            if let Err(refused) = open_upstream(
                ctx,
                &mut o.client,
                &mut o.upstream,
                &mut o.session,
                &mut o.relay,
            )
            .await
            {
                refuse(ctx, &mut opened.client, &refused, peer, accepted).await;
                return Err(Outcome::Refused(refused));
            }
            ctx.metrics
                .accept_to_decision_seconds
                .get_or_create(&metrics::Outcome {
                    outcome: "connack_forwarded",
                })
                .observe(accepted.elapsed().as_secs_f64());
            opened.authorized = opened
                .session
                .authz
                .take()
                .map(|a| authorized_relay(ctx, &opened.session, *a));
            Ok(opened)
        }
        Err(refused) => {
            refuse(ctx, &mut client, &refused, peer, accepted).await;
            Err(Outcome::Refused(refused))
        }
    }
}

/// Phase 1b, on the WebSocket listener: the HTTP/1.1 Upgrade inside the connect deadline.
/// A refused upgrade is answered with its HTTP status (SPEC §8: never a hang).
async fn upgrade(
    tls: TlsConn,
    rules: &UpgradeRules,
    deadline: tokio::time::Instant,
) -> Result<ClientStream, UpgradeRefusal> {
    let ws = ws::accept(tls, rules, deadline).await?;
    Ok(ClientStream::Ws(Box::new(ws)))
}

/// Phase 1: the TLS handshake under the connect deadline, with the configuration (and so
/// the verifier) of the trust state current at accept. The decision after CONNECT
/// re-admits the certificate against the state current then.
async fn handshake(
    ctx: &Ctx,
    tcp: TcpStream,
    peer: Peer,
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
    client: &mut ClientStream,
    trust_rx: &mut TrustWatch,
    peer: Peer,
    deadline: tokio::time::Instant,
) -> Result<(Session, TcpStream, OwnedSemaphorePermit), Refused> {
    let (connect, pipelined) = read_connect(client, deadline, ctx.limits.max_connect_bytes).await?;
    let version = connect.version;
    // MQTT-3.1.3-8: a 3.1.x client with no ClientId may not ask for a session that outlives
    // its connection (MQTT 5 lets the server assign one instead).
    if version != Version::V5 && connect.client_id.is_empty() && !connect.clean_start {
        return Err(Refused::IdentifierRejected(version));
    }
    // Busy before the decision: a client past the limit learns nothing about the registry.
    let slot = ctx.slots.session().ok_or(Refused::Busy(version))?;
    // One session name per connection for an empty ClientId, kept across a second decision.
    let fresh = match connect.client_id.is_empty() {
        true => assign_session_name(),
        false => String::new(),
    };
    let asked = Asked {
        connect: &connect,
        fresh: &fresh,
    };
    let (answer, mut grant) =
        decide_at_connect(ctx, trust_rx, client, asked, peer, deadline).await?;
    let claim = claim_session(ctx, &grant, version)?;
    let upstream = dial(ctx).await.map_err(|e| Refused::Upstream(version, e))?;
    // No await from here until the first byte is written upstream.
    if trust_rx.has_changed().unwrap_or(false) {
        let trust = trust_rx.borrow_and_update().clone();
        grant = decide(ctx, &trust, client, asked, answer.as_deref(), peer, true)?;
    }
    let (mut first_bytes, proxy_len) = first_bytes(ctx, peer, &grant)?;
    // The grant's parts go to their enforcers; the session keeps only what it reads.
    let Grant {
        identity,
        permissions,
        assigned_client_id,
        session_expiry,
        ..
    } = grant;
    let told = (assigned_client_id.is_some() || session_expiry.is_some()).then(|| {
        Box::new(Told {
            assigned_client_id,
            session_expiry,
        })
    });
    let jwt = JwtSession::from_connect(identity.method, &connect);
    let webhook = answer.map(|answer| WebhookSession::new(answer, &connect));
    // A JWT session may re-authenticate: only the authorized relay reads client packets
    // at their boundaries, so it runs one even with nothing to authorize. Other sessions
    // without `[authorization]` keep the plain byte relay (which still stops at an AUTH).
    let authz = match (permissions, &jwt) {
        (None, None) => {
            first_bytes.extend_from_slice(&pipelined);
            None
        }
        (permissions, _) => Some(Box::new(SessionAuthz::new(permissions, pipelined))),
    };
    let session = Session {
        version,
        username: connect.username,
        jwt,
        webhook,
        identity,
        told,
        first_bytes,
        proxy_len,
        claim,
        authz,
    };
    Ok((session, upstream, slot))
}

/// What goes upstream first: the PROXY v2 header when one is sent (SPEC §8: with it, a
/// Mosquitto 2.1 takes the client's address and the verified name as the TLS CN), then
/// the grant's CONNECT; and how long the header is.
fn first_bytes(ctx: &Ctx, peer: Peer, grant: &Grant) -> Result<(Vec<u8>, usize), Refused> {
    let mut first_bytes = grant
        .proxy_header(&ctx.upstream_policy, peer.addr, peer.local)
        .unwrap_or_default();
    let proxy_len = first_bytes.len();
    // A rewrite can grow a field past what MQTT allows (a per-identity client id).
    let encoded = grant.connect.encode().map_err(|_| {
        Refused::Parse(ParseError::Malformed {
            version: Some(grant.connect.version),
            reason: "rewritten connect does not fit mqtt's field lengths",
        })
    })?;
    first_bytes.extend_from_slice(&encoded);
    Ok((first_bytes, proxy_len))
}

/// A session name for an empty ClientId (SPEC §13): 128 random bits, so no later
/// connection can name it to take the session over.
fn assign_session_name() -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    // aws-lc-rs's system random, which does not fail on Linux; zeros would still be a
    // valid (if guessable) name.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let mut id = String::with_capacity(9 + 32);
    id.push_str("mqttgate-");
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The relay of an authorized (or JWT) session, from what its CONNECT and CONNACK left.
fn authorized_relay(ctx: &Ctx, session: &Session, a: SessionAuthz) -> Box<AuthorizedRelay> {
    let mode = ctx.authz_mode.unwrap_or(AuthzMode::Enforce);
    let name = session.identity.authentication_name.clone();
    let auth = match a.permissions {
        Some(permissions) => Authorizer::new(
            permissions,
            mode,
            session.version,
            a.topic_alias_max,
            Counters::new(&ctx.metrics, mode),
            name,
        ),
        None => Authorizer::allow_all(session.version, name),
    };
    Box::new(AuthorizedRelay::new(
        auth,
        session.version,
        a.pipelined,
        a.down,
        (ctx.metrics.up_bytes(), ctx.metrics.down_bytes()),
    ))
}
