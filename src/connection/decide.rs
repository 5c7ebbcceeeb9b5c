//! Phases 2 and 3: the CONNECT read, then decided against the newest trust state (the
//! webhook asked first for the clients it decides), every decision counted and logged once,
//! and the session claimed among its identity's (SPEC §10). Audit-only mode (SPEC §12)
//! records what would have been refused and lets the client through as itself.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::UnixTime;

use super::outcome::Refused;
use super::session::Session;
use super::Ctx;
use crate::audit;
use crate::auth::grant::{self, Grant};
use crate::auth::webhook::{self as hook, Answer, Route};
use crate::auth::{self, Denial, Identity, Method};
use crate::authz::{Authz, ClientPermissions, Facts};
use crate::config::AuthzMode;
use crate::metrics;
use crate::mqtt::{self, Connect, ParseError, Version};
use crate::server::sessions::SessionClaim;
use crate::transport::packet_io::{self, ReadError};
use crate::transport::{ClientStream, Peer};
use crate::trust::cert::CertInfo;
use crate::trust::{unix_now, Credentials, Trust, TrustWatch};

/// What the client asked for: its CONNECT, and the session name mqttgate gives it when its
/// ClientId is empty (made once per connection, so a second decision names the same one).
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub(super) connect: &'a Connect,
    pub(super) fresh: &'a str,
}

/// Phase 3 at CONNECT: the webhook's answer when it decides this client (phase 3a), then
/// the decision against the trust state current now. The receiver marks that state seen.
pub(super) async fn decide_at_connect(
    ctx: &Ctx,
    trust_rx: &mut TrustWatch,
    client: &ClientStream,
    asked: Asked<'_>,
    peer: Peer,
    deadline: tokio::time::Instant,
) -> Result<(Option<Arc<Answer>>, Grant), Refused> {
    let connect = asked.connect;
    let trust = trust_rx.borrow_and_update().clone();
    match ask_webhook(ctx, &trust, client, connect, peer, deadline).await {
        Ok(answer) => {
            let grant = decide(ctx, &trust, client, asked, answer.as_deref(), peer, false)?;
            Ok((answer, grant))
        }
        // SPEC §12: let through as itself, the webhook's failure counted as would_deny.
        Err(Refused::Webhook(_, failure)) if ctx.audit_only => {
            let grant = unverified(ctx, &trust, asked, Method::Webhook);
            record_would_deny(ctx, failure.refusal_label(), &grant.identity);
            Ok((None, grant))
        }
        Err(refused) => Err(refused),
    }
}

/// Phase 3b (SPEC §10): the session the grant names, among its identity's: a takeover of
/// one it holds, or a new one within `max_per_authentication_name`; and not connecting
/// more often than the session's connect rate.
pub(super) fn claim_session(
    ctx: &Ctx,
    grant: &Grant,
    version: Version,
) -> Result<Option<SessionClaim>, Refused> {
    let assigned = grant.assigned_client_id.is_some();
    match ctx.sessions.claim(
        &grant.identity.authentication_name,
        &grant.session,
        assigned,
        Instant::now(),
    ) {
        Ok(claim) => Ok(claim),
        Err(r) if ctx.audit_only => {
            let refused = Refused::Session(r, version);
            record_would_deny(ctx, refused.label(), &grant.identity);
            Ok(None)
        }
        Err(r) => Err(Refused::Session(r, version)),
    }
}

/// SPEC §12: a refusal audit-only mode did not enforce, counted and logged as `would_deny`.
pub(super) fn record_would_deny(ctx: &Ctx, reason: &'static str, identity: &Identity) {
    ctx.metrics
        .decisions
        .get_or_create(&metrics::Decision {
            result: "would_deny",
            reason,
            scheme: identity.scheme.map(|s| s.label()).unwrap_or(""),
            source: identity.source.label(),
            method: identity.method.label(),
        })
        .inc();
    audit::would_deny(reason, &identity.authentication_name);
}

/// A live session's re-decision or expiry that audit-only mode did not enforce.
pub(super) fn would_deny(ctx: &Ctx, reason: &'static str, session: &Session) {
    record_would_deny(ctx, reason, &session.identity);
}

/// Phase 3a, SPEC §9: the webhook's answer for a client it decides; None for a client the
/// registry decides, which never waits here (a slow or dead webhook delays only its own
/// clients). No answer in time, or no room for another request: Server unavailable.
async fn ask_webhook(
    ctx: &Ctx,
    trust: &Trust,
    client: &ClientStream,
    connect: &Connect,
    peer: Peer,
    deadline: tokio::time::Instant,
) -> Result<Option<Arc<Answer>>, Refused> {
    let (Some(webhook), Some(settings)) = (&ctx.webhook, &trust.webhook) else {
        return Ok(None);
    };
    let chain = client.peer_certificates().filter(|c| !c.is_empty());
    let username = connect.username.as_deref();
    let presented = hook::Presented {
        certificate: chain.is_some(),
        // As `auth::credentials` reads it (which refuses a list that does not parse).
        jwt: trust.jwt.is_some()
            && connect.version == Version::V5
            && connect.authentication_method() != Ok(None),
    };
    let route = hook::route(Some(settings.decides), presented, || {
        chain.is_some_and(|c| hook::registered(&c[0], username, &trust.registry, &trust.policy))
    });
    if route == Route::Elsewhere {
        return Ok(None);
    }
    // v5 only; a property list that does not parse sends neither field.
    let request = hook::Request {
        client_id: &connect.client_id,
        user_name: username,
        password: connect.password.as_deref(),
        authentication_method: connect.authentication_method().ok().flatten(),
        authentication_data: connect.authentication_data().ok().flatten(),
        client_certificate: chain,
        client_certificate_chain: chain,
    };
    let started = Instant::now();
    let asked = webhook
        .ask(settings, &request, deadline, &ctx.metrics)
        .await;
    let (result, answer) = match &asked {
        Ok(a) if a.cached => ("cached", Some(&*a.answer)),
        Ok(a) => (a.answer.label(), Some(&*a.answer)),
        Err(f) => (f.label(), None),
    };
    audit::webhook_answer(
        &ctx.denial_log,
        peer.addr,
        &connect.client_id,
        result,
        answer,
        started.elapsed(),
    );
    match asked {
        Ok(a) => Ok(Some(a.answer)),
        Err(f) => Err(Refused::Webhook(connect.version, f)),
    }
}

/// Phase 3: the decision (`Trust::decide`: the certificate admitted again, then the
/// registry, or the webhook's answer), recorded in the audit log and metrics. `again`
/// marks a second decision after a reload overtook the first; each is logged as the
/// decision it was. The decision ends in the connection's grant (SPEC §13): what the
/// broker receives and what the session may do, computed once, here.
pub(super) fn decide(
    ctx: &Ctx,
    trust: &Trust,
    client: &ClientStream,
    asked: Asked<'_>,
    answer: Option<&Answer>,
    peer: Peer,
    again: bool,
) -> Result<Grant, Refused> {
    let connect = asked.connect;
    let (credentials, method) = match answer {
        Some(answer) => {
            let chain = client.peer_certificates().filter(|c| !c.is_empty());
            (Ok(Credentials::Webhook { answer, chain }), Method::Webhook)
        }
        None => {
            let credentials =
                auth::credentials(client.peer_certificates(), connect, trust.jwt.is_some());
            let method = credentials
                .as_ref()
                .map_or(Method::Certificate, Credentials::method);
            (credentials, method)
        }
    };
    let (admitted, decision) = match credentials {
        Ok(c) => match trust.decide(&c, UnixTime::now()) {
            Ok(decided) => decided,
            // SPEC §12: a certificate refused at admission is a decision like the others.
            Err(f) if ctx.audit_only => {
                let grant = unverified(ctx, trust, asked, method);
                record_would_deny(ctx, f.0.label(), &grant.identity);
                return Ok(grant);
            }
            Err(f) => return Err(Refused::Certificate(f.0)),
        },
        Err(denial) => (None, Err(denial)),
    };
    let decision = decision.and_then(|identity| verified(ctx, trust, asked, identity));
    let info = admitted.as_ref().map(|a| &a.leaf);
    if let (Some(info), false) = (info, again) {
        ctx.metrics
            .client_cert_days
            .observe((info.not_after - unix_now()) as f64 / 86_400.0);
    }
    let (version, cipher) = client.tls_facts();
    let facts = audit::TlsFacts { version, cipher };
    let recorded = decision.as_ref().map(|g| &g.identity);
    record_decision(ctx, recorded, info, method, connect, peer, &facts);
    match decision {
        Ok(grant) => Ok(grant),
        // Let through as itself: its own username and ClientId go upstream.
        Err(_) if ctx.audit_only => Ok(unverified(ctx, trust, asked, method)),
        Err(denial) => Err(Refused::Denied(denial, connect.version)),
    }
}

/// SPEC §13: the grant of a verified identity, with its permissions under the model of
/// the state it was decided against; a denial when its CONNECT asks for more than the
/// identity may have (a Will topic it may not publish to, an unverified username under
/// passthrough, a name that cannot go upstream).
fn verified(
    ctx: &Ctx,
    trust: &Trust,
    asked: Asked<'_>,
    identity: Identity,
) -> Result<Grant, Denial> {
    let mode = ctx.authz_mode.unwrap_or(AuthzMode::Enforce);
    let permissions = trust
        .authz
        .as_deref()
        .map(|m| (permissions(m, &identity), mode));
    let (name, source, scheme) = (
        identity.authentication_name.clone(),
        identity.source,
        identity.scheme,
    );
    let fresh = || asked.fresh.to_string();
    grant::grant(
        asked.connect,
        identity,
        permissions,
        &ctx.upstream_policy,
        fresh,
    )
    .map_err(|reason| Denial {
        reason,
        name: Some(name),
        source: Some(source),
        scheme,
    })
}

/// SPEC §12: a client audit mode lets through as itself; its permissions (audited, never
/// enforced) follow the name it typed.
fn unverified(ctx: &Ctx, trust: &Trust, asked: Asked<'_>, method: Method) -> Grant {
    let typed = |id: &Identity| trust.authz.as_deref().map(|m| permissions(m, id));
    let fresh = || asked.fresh.to_string();
    grant::unverified(asked.connect, method, typed, &ctx.upstream_policy, fresh)
}

/// What the client's and the model's facts allow (SPEC §11).
pub(super) fn permissions(model: &Authz, identity: &Identity) -> ClientPermissions {
    model.permissions(&Facts::new(
        &identity.authentication_name,
        &identity.attributes,
    ))
}

fn record_decision(
    ctx: &Ctx,
    decision: Result<&Identity, &Denial>,
    cert: Option<&CertInfo>,
    method: Method,
    connect: &Connect,
    peer: Peer,
    facts: &audit::TlsFacts,
) {
    let labels = match decision {
        Ok(id) => (
            "allowed",
            "",
            id.scheme.map(|s| s.label()).unwrap_or(""),
            id.source.label(),
        ),
        Err(d) => (
            if ctx.audit_only {
                "would_deny"
            } else {
                "denied"
            },
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
            method: method.label(),
        })
        .inc();
    audit::decision(
        &ctx.denial_log,
        decision,
        cert,
        method,
        connect,
        peer.addr,
        facts,
        labels,
    );
}

/// Phase 2: buffers exactly the first packet, bounded by `max` bytes and the deadline.
/// Returns the CONNECT and any bytes the client pipelined after it.
pub(super) async fn read_connect(
    client: &mut ClientStream,
    deadline: tokio::time::Instant,
    max: usize,
) -> Result<(Connect, Vec<u8>), Refused> {
    // Most CONNECTs fit in a few hundred bytes; grow only when the header says so.
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let read = packet_io::read_packet(client, &mut buf, deadline, max, |b| {
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
