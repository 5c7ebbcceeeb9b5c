//! A live session: the relay both ways, re-decided on every reload, ended at its
//! identity's validity end (unless a JWT client re-authenticates first), at shutdown, or
//! when one side lingers past the other's close.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use tracing::{debug, info, warn};

use super::authorized_relay::{AuthorizedRelay, Ended};
use super::decide::would_deny;
use super::outcome::Closed;
use super::reauth;
use super::{Ctx, Lifecycle, Opened};
use crate::auth::webhook::Answer;
use crate::auth::{self, Identity, Method};
use crate::authz::ClientPermissions;
use crate::config::AuthzMode;
use crate::metrics;
use crate::mqtt::{self, Connect, PacketBoundary, Version};
use crate::server::sessions::SessionClaim;
use crate::transport::relay::Relay;
use crate::transport::ClientStream;
use crate::trust::{unix_now, Credentials, Trust, TrustWatch};

/// What was decided about an admitted client, kept for the life of the session. The
/// certificate itself stays in rustls (which keeps the peer chain anyway) and is admitted
/// again only when a reload asks for a new decision.
pub(super) struct Session {
    pub(super) version: Version,
    /// The CONNECT username, needed to re-decide on reload.
    pub(super) username: Option<String>,
    /// A JWT client's method and token, needed to re-decide on reload and to answer with
    /// its method in the CONNACK; boxed, so certificate sessions pay one pointer.
    pub(super) jwt: Option<Box<JwtSession>>,
    /// A webhook client's answer, to re-decide it on reload, and the Authentication
    /// Method it sent, to answer with in the CONNACK.
    pub(super) webhook: Option<Box<WebhookSession>>,
    /// The grant's identity (SPEC §13): what re-decisions, expiry and the record read.
    /// The grant's other parts went to their enforcers when the session opened: its
    /// CONNECT and PROXY identity upstream (`first_bytes`), its permissions to the
    /// authorized relay, its session name to `claim`, what the client is told to `told`.
    pub(super) identity: Identity,
    /// What the v5 CONNACK adds from the grant, until it is sent; boxed and usually None,
    /// so an idle session pays a pointer.
    pub(super) told: Option<Box<Told>>,
    /// The CONNECT for the broker followed by the bytes the client pipelined after its
    /// own, in order, after the PROXY header when one is sent; emptied once sent.
    pub(super) first_bytes: Vec<u8>,
    /// How many of `first_bytes` are the PROXY header (not MQTT, not counted as relayed).
    pub(super) proxy_len: usize,
    /// Under `[authorization]`, and for a JWT session: what the session's authorized
    /// relay starts from.
    pub(super) authz: Option<Box<SessionAuthz>>,
    /// The (authentication name, session name) this connection holds (SPEC §10); None
    /// when audit-only mode let it through past a limit, or once the broker has ended the
    /// session (SPEC §13: released then, not when the client finally closes).
    pub(super) claim: Option<SessionClaim>,
}

/// What the grant tells a v5 client in its CONNACK (SPEC §10, §13).
pub(super) struct Told {
    pub(super) assigned_client_id: Option<String>,
    pub(super) session_expiry: Option<u32>,
}

/// What a webhook session keeps (SPEC §9).
pub(super) struct WebhookSession {
    pub(super) answer: Arc<Answer>,
    /// MQTT-4.12.0-5: a v5 client that sent an Authentication Method hears it in the
    /// CONNACK, which the broker (never told of it) would leave out.
    pub(super) method: Option<String>,
}

/// What a JWT session keeps of its CONNECT (SPEC §9). Never logged.
pub(super) struct JwtSession {
    pub(super) method: String,
    pub(super) token: Vec<u8>,
}

impl JwtSession {
    /// A JWT client's method and token, from its CONNECT.
    pub(super) fn from_connect(method: Method, connect: &Connect) -> Option<Box<JwtSession>> {
        let (Method::Jwt, Ok(Some(name))) = (method, connect.authentication_method()) else {
            return None;
        };
        let token = connect
            .authentication_data()
            .ok()
            .flatten()
            .unwrap_or_default();
        Some(Box::new(JwtSession {
            method: name.to_string(),
            token: token.to_vec(),
        }))
    }
}

impl WebhookSession {
    pub(super) fn new(answer: Arc<Answer>, connect: &Connect) -> Box<WebhookSession> {
        let method = connect.authentication_method().ok().flatten();
        Box::new(WebhookSession {
            answer,
            method: method.map(str::to_string),
        })
    }
}

impl SessionAuthz {
    pub(super) fn new(permissions: Option<ClientPermissions>, pipelined: Vec<u8>) -> SessionAuthz {
        SessionAuthz {
            permissions,
            pipelined,
            topic_alias_max: 0,
            down: PacketBoundary::default(),
        }
    }
}

impl Session {
    /// What the session authenticated with, for a re-decision; None when a certificate
    /// session's chain is gone (never, for a TLS client).
    fn credentials<'a>(&'a self, client: &'a ClientStream) -> Option<Credentials<'a>> {
        let chain = client.peer_certificates();
        Some(match (&self.jwt, &self.webhook) {
            (Some(j), _) => Credentials::Jwt {
                method: &j.method,
                token: &j.token,
            },
            // A webhook client is re-decided on the answer it was admitted with: a reload
            // changes files, not the webhook's word (its certificate, if any, is admitted
            // again).
            (None, Some(w)) => Credentials::Webhook {
                answer: &w.answer,
                chain: chain.filter(|c| !c.is_empty()),
            },
            (None, None) => Credentials::Certificate {
                chain: chain?,
                username: self.username.as_deref(),
            },
        })
    }
}

/// What a session run by the authorized relay starts it with: under `[authorization]`
/// (SPEC §11), or a JWT session's, whose AUTH packets the relay finds (SPEC §9).
pub(super) struct SessionAuthz {
    /// Computed once, at CONNECT, from the decided identity; None without
    /// `[authorization]` (no topic checks).
    pub(super) permissions: Option<ClientPermissions>,
    /// What the client pipelined after its CONNECT: decided like every later packet, so
    /// it is not in `first_bytes`.
    pub(super) pipelined: Vec<u8>,
    /// The broker's CONNACK Topic Alias Maximum: the aliases the client may set.
    pub(super) topic_alias_max: u16,
    /// The broker stream's packet boundary after the CONNACK was passed on.
    pub(super) down: PacketBoundary,
}

/// How long a stopping session may take to reach a broker packet boundary before it is
/// closed without a DISCONNECT.
const BOUNDARY_GRACE: Duration = Duration::from_secs(1);

/// Phase 6: relay both ways until a side closes, re-deciding the session on every reload
/// and ending it when its identity's validity ends (certificate or CA notAfter, a token's
/// `exp`, the webhook's expiration) or at shutdown.
pub(super) async fn relay_session(ctx: &Ctx, open: &mut Opened) -> Closed {
    let Opened {
        client,
        upstream,
        relay,
        authorized,
        session,
        trust_rx,
        ..
    } = open;
    let version = session.version;
    let mut lifecycle = ctx.lifecycle.clone();
    // One timer for both deadlines a session has: its identity's validity end, and, once
    // one side has closed, the other side's linger (a second `Sleep` is 112 bytes more in
    // every idle session's task).
    let mut deadlines = Deadlines {
        valid_until: expiry_instant(session.identity.valid_until),
        linger_until: None,
    };
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);

    let (closed, reason) = loop {
        let next = tokio::select! {
            ended = run_relay(relay, authorized, &mut *client, &mut *upstream) => {
                on_relay_end(ctx, ended, relay, session, authorized, trust_rx, &mut deadlines)
            }
            changed = trust_rx.changed() => match changed {
                Ok(()) => {
                    let trust = trust_rx.borrow_and_update().clone();
                    on_reload(ctx, &trust, client, session, authorized, &mut deadlines)
                }
                Err(_) => Next::Continue,
            },
            () = &mut timer => on_deadline(ctx, session, relay, authorized, &mut deadlines),
            changed = lifecycle.changed() => {
                let state = if changed.is_ok() { *lifecycle.borrow_and_update() } else { Lifecycle::Closing };
                match state {
                    Lifecycle::Running => Next::Continue,
                    Lifecycle::Draining if version != Version::V5 => Next::Continue,
                    _ => Next::Stop(Closed::Shutdown, mqtt::code::V5_SERVER_SHUTTING_DOWN),
                }
            }
        };
        match next {
            Next::Continue => timer.as_mut().reset(deadlines.next()),
            Next::Ended(closed) => return closed,
            Next::Stop(closed, reason) => break (closed, reason),
        }
    };
    let finish = EndWith {
        relay,
        authorized,
        version,
        reason,
        farewell: closed.ends_grant(),
        linger: ctx.limits.linger,
    };
    end_session(finish, client, upstream).await;
    closed
}

/// What one event in a live session leads to.
enum Next {
    /// The session goes on (its deadlines may have moved).
    Continue,
    /// The session ended by itself: a side closed, or lingered past the other's close.
    Ended(Closed),
    /// mqttgate ends the session; an MQTT 5 client hears this DISCONNECT reason code.
    Stop(Closed, u8),
}

/// The two deadlines a session has, served by one timer.
struct Deadlines {
    /// The first instant past the identity's validity.
    valid_until: tokio::time::Instant,
    /// Once one side has closed, when the other side's linger ends.
    linger_until: Option<tokio::time::Instant>,
}

impl Deadlines {
    fn next(&self) -> tokio::time::Instant {
        self.linger_until
            .map_or(self.valid_until, |l| l.min(self.valid_until))
    }
}

/// The relay stopped: a side closed (the other gets the linger), authorization ended the
/// session, or a JWT client's AUTH packet waits to be decided.
fn on_relay_end(
    ctx: &Ctx,
    ended: Ended,
    relay: &Relay,
    session: &mut Session,
    authorized: &mut Option<Box<AuthorizedRelay>>,
    trust_rx: &TrustWatch,
    deadlines: &mut Deadlines,
) -> Next {
    match ended {
        Ended::HalfClosed => {
            deadlines.linger_until = Some(tokio::time::Instant::now() + ctx.limits.linger);
            // SPEC §13: the session ended at the broker, so its place among the identity's
            // sessions is free now, not when the client finally closes.
            if first_to_close(relay, authorized) == Some(false) {
                session.claim = None;
            }
            Next::Continue
        }
        Ended::Client => Next::Ended(Closed::Client),
        Ended::Upstream => Next::Ended(Closed::Upstream),
        Ended::Error(e) => {
            debug!(error = %e, "session relay failed");
            Next::Ended(Closed::Error)
        }
        // SPEC §11: v3.1.1 has no negative PUBACK.
        Ended::NotAuthorized => Next::Stop(Closed::NotAuthorized, mqtt::code::V5_NOT_AUTHORIZED),
        Ended::ProtocolError => Next::Stop(Closed::ProtocolError, mqtt::code::V5_PROTOCOL_ERROR),
        // SPEC §13: no other method takes an AUTH, and none reaches the broker.
        Ended::Reauthenticate(_) if session.jwt.is_none() => {
            Next::Stop(Closed::ProtocolError, mqtt::code::V5_PROTOCOL_ERROR)
        }
        Ended::Reauthenticate(packet) => {
            let trust = trust_rx.borrow().clone();
            match reauthenticate(ctx, &trust, session, authorized, packet) {
                Ok(true) => {
                    deadlines.valid_until = expiry_instant(session.identity.valid_until);
                    Next::Continue
                }
                Ok(false) => Next::Continue,
                Err((closed, reason)) => Next::Stop(closed, reason),
            }
        }
    }
}

/// SPEC §5 and §7: a reload re-decides the session against the new trust state.
fn on_reload(
    ctx: &Ctx,
    trust: &Trust,
    client: &ClientStream,
    session: &Session,
    authorized: &mut Option<Box<AuthorizedRelay>>,
    deadlines: &mut Deadlines,
) -> Next {
    match still_allowed(trust, client, session) {
        Some(id) => {
            if !same_permissions(trust, authorized, &id) {
                return Next::Stop(Closed::AuthorizationChanged, mqtt::code::V5_NOT_AUTHORIZED);
            }
            deadlines.valid_until = expiry_instant(id.valid_until);
            Next::Continue
        }
        // SPEC §12: counted and logged, the session goes on.
        None if ctx.audit_only => {
            would_deny(ctx, "revoked", session);
            Next::Continue
        }
        None => Next::Stop(Closed::Revoked, mqtt::code::V5_ADMINISTRATIVE_ACTION),
    }
}

/// The timer fired: the linger after one side's close is over, or the identity's
/// validity ended.
fn on_deadline(
    ctx: &Ctx,
    session: &Session,
    relay: &Relay,
    authorized: &Option<Box<AuthorizedRelay>>,
    deadlines: &mut Deadlines,
) -> Next {
    if deadlines
        .linger_until
        .is_some_and(|l| l <= tokio::time::Instant::now())
    {
        // The side still open is closed when the session's sockets are dropped.
        let client_first = first_to_close(relay, authorized) == Some(true);
        let side = if client_first { "upstream" } else { "client" };
        ctx.metrics
            .linger_expired
            .get_or_create(&metrics::Side { side })
            .inc();
        return Next::Ended(if client_first {
            Closed::Client
        } else {
            Closed::Upstream
        });
    }
    // The same DISCONNECT whichever method's validity ended (0x98).
    let closed = match session.identity.method {
        auth::Method::Certificate => Closed::CertificateExpired,
        auth::Method::Jwt => Closed::TokenExpired,
        auth::Method::Webhook => Closed::WebhookExpired,
    };
    if ctx.audit_only {
        would_deny(ctx, closed.label(), session);
        deadlines.valid_until = expiry_instant(i64::MAX);
        return Next::Continue;
    }
    Next::Stop(closed, mqtt::code::V5_ADMINISTRATIVE_ACTION)
}

/// Which side closed first, once one has (the client: true), from the session's relay.
fn first_to_close(relay: &Relay, authorized: &Option<Box<AuthorizedRelay>>) -> Option<bool> {
    match authorized {
        Some(a) => a.first_to_close(),
        None => relay.first_to_close(),
    }
}

/// The session's relay: the authorized one when `[authorization]` is configured or the
/// session is a JWT client's (chosen once, at CONNACK), else the plain byte relay.
async fn run_relay(
    relay: &mut Relay,
    authorized: &mut Option<Box<AuthorizedRelay>>,
    client: &mut ClientStream,
    upstream: &mut TcpStream,
) -> Ended {
    match authorized {
        Some(a) => a.run(client, upstream).await,
        None => relay.run(client, upstream).await.into(),
    }
}

/// SPEC §11 after a reload: does the re-decided identity have the permissions the
/// session started with? Changed permissions end an enforcing session (Azure:
/// `ClientAuthorizationError`); in audit mode the change is logged and the session goes
/// on with the new ones.
fn same_permissions(
    trust: &Trust,
    authorized: &mut Option<Box<AuthorizedRelay>>,
    id: &auth::Identity,
) -> bool {
    let (Some(a), Some(model)) = (authorized.as_deref_mut(), trust.authz.as_deref()) else {
        return true;
    };
    let auth = a.authorizer();
    if auth.replace(super::decide::permissions(model, id)) {
        return true;
    }
    if auth.mode() == AuthzMode::Audit {
        info!(target: "mqttgate::audit", event = "authorization_changed", result = "would_deny", authentication_name = id.authentication_name.as_str(), "a reload or a re-authentication changed this session's permissions");
        return true;
    }
    false
}

/// SPEC §9: decides a client's AUTH packet against the newest trust state. Allowed, the
/// session takes the new token and identity (true) and mqttgate answers AUTH 0x00 between
/// broker packets; refused, how the session ends. In audit-only mode a refused token is
/// counted and logged, answered as allowed, and the session keeps its old token (false).
/// The token is never logged: its `jti` and the name are.
fn reauthenticate(
    ctx: &Ctx,
    trust: &Trust,
    session: &mut Session,
    authorized: &mut Option<Box<AuthorizedRelay>>,
    packet: Result<Vec<u8>, usize>,
) -> Result<bool, (Closed, u8)> {
    let method = session.jwt.as_deref().map(|j| j.method.as_str());
    let name = session.identity.authentication_name.as_str();
    let packet = packet.as_deref().map_err(|n| *n);
    let decided = reauth::decide(trust, method, name, packet, UnixTime::now());
    let count = |result, reason| {
        ctx.metrics
            .reauthentications
            .get_or_create(&metrics::ResultReason { result, reason })
            .inc();
    };
    let (identity, token) = match decided {
        Ok(allowed) => allowed,
        Err(f) if ctx.audit_only && f.is_denial() => {
            count("would_deny", f.label());
            info!(target: "mqttgate::audit", event = "reauthentication", result = "would_deny", reason = f.label(), authentication_name = name, "would refuse this re-authentication (audit-only mode)");
            answer_success(session, authorized);
            return Ok(false);
        }
        Err(f) => {
            count("failed", f.label());
            warn!(target: "mqttgate::audit", event = "reauthentication", result = "failed", reason = f.label(), authentication_name = name, "re-authentication refused");
            return Err((Closed::ReauthenticationFailed, f.disconnect_code()));
        }
    };
    count("ok", "");
    info!(target: "mqttgate::audit", event = "reauthentication", result = "ok", authentication_name = name, jti = identity.jti.as_deref().unwrap_or(""), valid_until = identity.valid_until, "re-authenticated");
    // New claims may be new attributes, and so new grants: a changed set ends the session
    // as a reload that changes it does (the broker holds subscriptions decided with the
    // old one).
    if !same_permissions(trust, authorized, &identity) {
        return Err((Closed::AuthorizationChanged, mqtt::code::V5_NOT_AUTHORIZED));
    }
    if let Some(jwt) = session.jwt.as_deref_mut() {
        jwt.token = token;
    }
    // The broker and the session limits know the session by the name it connected with
    // (the same name, perhaps spelled otherwise by this token).
    let name = std::mem::take(&mut session.identity.authentication_name);
    session.identity = auth::Identity {
        authentication_name: name,
        ..identity
    };
    answer_success(session, authorized);
    Ok(true)
}

/// Queues AUTH 0x00 with the session's Authentication Method (MQTT-4.12.0-5) for the
/// client, written between broker packets.
fn answer_success(session: &Session, authorized: &mut Option<Box<AuthorizedRelay>>) {
    let (Some(jwt), Some(a)) = (session.jwt.as_deref(), authorized.as_deref_mut()) else {
        return;
    };
    a.answer(&mqtt::auth::packet(mqtt::auth::SUCCESS, &jwt.method));
}

/// What ending a session takes: its relay (of either kind), the client's version, the
/// DISCONNECT reason and the linger.
struct EndWith<'a> {
    relay: &'a mut Relay,
    authorized: &'a mut Option<Box<AuthorizedRelay>>,
    version: Version,
    reason: u8,
    /// The grant no longer holds: the broker hears a DISCONNECT, so the Will is discarded.
    farewell: bool,
    linger: Duration,
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
async fn end_session(end: EndWith<'_>, client: &mut ClientStream, upstream: &mut TcpStream) {
    let EndWith {
        relay,
        authorized,
        version,
        reason,
        farewell,
        linger,
    } = end;
    let finished = match authorized {
        Some(a) => {
            let finish = a.finish_at_boundary(client, upstream, farewell);
            timeout(BOUNDARY_GRACE, finish).await
        }
        None => {
            let finish = relay.finish_at_boundary(client, upstream, farewell);
            timeout(BOUNDARY_GRACE, finish).await
        }
    };
    let at_boundary = matches!(finished, Ok(Ok(())));
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
/// identity? Its new identity (validity end, attributes) when it is.
fn still_allowed(
    trust: &Trust,
    client: &ClientStream,
    session: &Session,
) -> Option<auth::Identity> {
    let credentials = session.credentials(client)?;
    let (_, decision) = trust.decide(&credentials, UnixTime::now()).ok()?;
    let id = decision.ok()?;
    auth::same_name(
        &id.authentication_name,
        &session.identity.authentication_name,
    )
    .then_some(id)
}
