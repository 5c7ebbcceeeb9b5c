//! What the subcommands do: `run`, `check` and `thumbprint`. Kept in the library so tests
//! can call them; `main.rs` only parses arguments.

#[cfg(feature = "demo")]
pub mod demo;
pub mod explain;
#[cfg(feature = "demo")]
pub mod pki;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::config::Config;
use crate::server::os_limits;
use crate::server::Server;
use crate::trust::cert::format_time;
use crate::trust::cert::Thumbprint;
use crate::trust::registry::{Scheme, State};
use crate::trust::{unix_now, Trust};

pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Warn when a certificate mqttgate depends on expires within this many days.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// `mqttgate run`: serve until SIGTERM or SIGINT, reloading on SIGHUP.
pub fn run(config_file: &Path) -> Result<(), CliError> {
    let config = Config::load(config_file)?;
    raise_open_files(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        serve_signals(server).await
    })
}

/// Raises the soft open-files limit to the hard one and says so when even that cannot
/// hold `max_connections` sessions: past it, accepts fail with EMFILE.
fn raise_open_files(config: &Config) {
    let need = os_limits::descriptors_needed(config);
    match os_limits::raise_open_files() {
        Ok(f) => {
            if f.soft != f.soft_before {
                info!(
                    from = f.soft_before,
                    to = f.soft,
                    "raised the soft open-files limit"
                );
            }
            if need > f.soft {
                warn!(
                    max_connections = config.limits.max_connections,
                    needed = need,
                    limit = f.soft,
                    "max_connections = {} needs about {need} open files but the hard limit is {}; raise it (LimitNOFILE, ulimit -Hn) or lower max_connections",
                    config.limits.max_connections,
                    f.hard
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn serve_signals(server: Arc<Server>) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                // A failed reload is logged and keeps the previous state.
                let _ = server.reload();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("shutting down: draining sessions");
    server.shutdown().await;
    Ok(())
}

fn days_left(ts: i64, now: i64) -> i64 {
    (ts - now).div_euclid(86_400)
}

/// `mqttgate check`: load everything and describe it. An `Err` means mqttgate would
/// refuse to start with this configuration.
pub fn check(config_file: &Path) -> Result<String, CliError> {
    use std::fmt::Write;
    let config = Config::load(config_file)?;
    let trust = Trust::load(&config, 0)?;
    let now = unix_now();
    let mut out = String::new();
    let mut warnings = Vec::new();
    writeln!(out, "config: {} (ok)", config_file.display())?;
    writeln!(
        out,
        "listen {} -> upstream {}; admin {}",
        config.listen, config.upstream, config.admin_listen
    )?;
    // The listeners and what each expects before MQTT (SPEC §8).
    let proxy_in = |proxy: &Option<Vec<_>>| match proxy {
        Some(nets) => format!(", a PROXY v2 header first, from {} network(s)", nets.len()),
        None => String::new(),
    };
    writeln!(
        out,
        "  listener {}: MQTT over TLS{}",
        config.listen,
        proxy_in(&config.inbound_proxy)
    )?;
    if let Some(ws) = &config.websocket {
        writeln!(
            out,
            "  listener {}: MQTT over WebSockets over TLS, path {}, upgrade request up to {} bytes{}",
            ws.listen,
            ws.rules.path,
            ws.rules.max_request_bytes,
            proxy_in(&ws.inbound_proxy)
        )?;
    }
    // The effective modes the grants are computed from (audit mode's applied).
    let policy = config.upstream_policy();
    writeln!(
        out,
        "  upstream {}: username {}, client id {}{}",
        config.upstream,
        match policy.username {
            crate::config::UsernameMode::Rewrite => "rewritten to the verified name",
            crate::config::UsernameMode::Passthrough =>
                "passed through (only a verified one, or any in audit mode)",
        },
        match policy.client_id {
            crate::config::ClientIdMode::AuthenticationName => "= the authentication name",
            crate::config::ClientIdMode::PerIdentity => "= <authentication name>/<client id>",
            crate::config::ClientIdMode::Passthrough => "passed through",
        },
        match (policy.proxy, config.audit_only) {
            (false, _) => "",
            (true, false) =>
                "; a PROXY v2 header with the client's address and verified name first",
            (true, true) =>
                "; a PROXY v2 header with the client's address, and the name only when verified",
        }
    )?;
    // What decides who gets in, besides the registry (SPEC §9, §10, §12).
    if config.audit_only {
        writeln!(
            out,
            "mode: audit (decisions are logged and counted as would_deny; nothing is refused)"
        )?;
    }
    writeln!(
        out,
        "sessions: {} per authentication name, {}, session expiry at most {} h",
        match config.sessions.max_per_authentication_name {
            usize::MAX => "no limit".to_string(),
            n => n.to_string(),
        },
        match config.sessions.connects_per_second {
            r if r > 0.0 => format!("{r} connects per second per session"),
            _ => "no connect rate".to_string(),
        },
        config.sessions.max_session_expiry / 3600
    )?;
    if let (Some(_), Some(jwt)) = (&config.jwt, &trust.jwt) {
        let kids: Vec<&str> = jwt.keys.iter().map(|k| k.kid.as_str()).collect();
        writeln!(
            out,
            "jwt: issuer {}, audiences {:?}, keys {:?}, algorithms {:?}, skew {} s",
            jwt.policy.issuer,
            jwt.policy.audiences,
            kids,
            jwt.policy.algorithms,
            jwt.policy.skew_seconds
        )?;
    }
    if let Some(w) = config.webhook.as_ref() {
        // The URL holds no credentials (userinfo is refused); the token is never printed.
        writeln!(
            out,
            "webhook: {} decides {:?} clients, timeout {} ms, at most {} in flight, bearer token {}",
            w.url.uri,
            w.decides,
            w.timeout.as_millis(),
            w.max_concurrent,
            if w.bearer_token_file.is_some() { "from a file" } else { "none" }
        )?;
    }
    if let (Some(a), Some(model)) = (&config.authorization, trust.authz.as_deref()) {
        let (groups, spaces, bindings) = model.sizes();
        writeln!(
            out,
            "authorization ({}): {groups} client groups ($all included), {spaces} topic spaces, {bindings} permission bindings, from {}, {}, {}",
            match a.mode {
                crate::config::AuthzMode::Enforce => "enforce",
                crate::config::AuthzMode::Audit => "audit: denials are counted and relayed",
            },
            a.client_groups.display(),
            a.topic_spaces.display(),
            a.permission_bindings.display()
        )?;
    }
    let backlog = config.limits.listen_backlog;
    let somaxconn = os_limits::somaxconn();
    let effective = os_limits::effective_backlog(backlog, somaxconn);
    // Both limits belong to where `check` runs, which may not be where mqttgate will:
    // reported, not counted as problems of the configuration.
    writeln!(
        out,
        "listen backlog here: {effective} (listen_backlog {backlog}, net.core.somaxconn {}{})",
        somaxconn.map_or("unknown".to_string(), |m| m.to_string()),
        if effective < backlog { ": capped" } else { "" }
    )?;
    // `run` raises the soft limit to the hard one, so the hard limit is what counts.
    let need = os_limits::descriptors_needed(&config);
    match os_limits::open_files() {
        Ok(f) => writeln!(
            out,
            "open files here: soft {}, hard {} (run raises soft to hard); max_connections {} needs about {need}: {}",
            f.soft,
            f.hard,
            config.limits.max_connections,
            if need <= f.hard { "fits" } else { "does not fit" }
        )?,
        Err(e) => writeln!(out, "open files here: unknown ({e})")?,
    }
    let sc = &trust.server_cert;
    writeln!(
        out,
        "server certificate: {} expires {} ({} days)",
        sc.subject_dn,
        format_time(sc.not_after),
        days_left(sc.not_after, now)
    )?;
    if days_left(sc.not_after, now) < EXPIRY_WARNING_DAYS {
        warnings.push(format!(
            "the server certificate expires {}",
            format_time(sc.not_after)
        ));
    }
    writeln!(out, "CA certificates: {}", trust.anchors.anchors.len())?;
    for a in &trust.anchors.anchors {
        writeln!(
            out,
            "  {}  expires {} ({} days)  {}  {}",
            a.info.subject_dn,
            format_time(a.info.not_after),
            days_left(a.info.not_after, now),
            a.info.thumbprint,
            a.file.display()
        )?;
        if days_left(a.info.not_after, now) < EXPIRY_WARNING_DAYS {
            warnings.push(format!(
                "CA certificate {} expires {}",
                a.info.subject_dn,
                format_time(a.info.not_after)
            ));
        }
    }
    for skipped in &trust.anchors.skipped {
        writeln!(out, "  skipped: {skipped}")?;
        warnings.push(format!("CA certificate skipped: {skipped}"));
    }
    let clients = trust.registry.clients();
    writeln!(out, "clients: {}", clients.len())?;
    let mut by_scheme: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for c in clients {
        let e = by_scheme.entry(c.scheme.as_str()).or_default();
        match c.state {
            State::Enabled => e.0 += 1,
            State::Disabled => e.1 += 1,
        }
    }
    for (scheme, (enabled, disabled)) in &by_scheme {
        writeln!(out, "  {scheme}: {enabled} enabled, {disabled} disabled")?;
    }
    let chain_clients = clients
        .iter()
        .filter(|c| c.scheme != Scheme::ThumbprintMatch)
        .count();
    if chain_clients > 0 && trust.anchors.anchors.is_empty() {
        warnings.push(format!(
            "{chain_clients} clients use a certificate-chain scheme but no CA certificate is registered: they can never connect"
        ));
    }
    if clients.is_empty() {
        warnings.push("the registry is empty: every client will be refused".to_string());
    }
    if config.name_sources.is_empty() {
        writeln!(
            out,
            "alternativeAuthenticationNameSources: none (clients must send a username)"
        )?;
    } else {
        let names: Vec<_> = config.name_sources.iter().map(|s| s.azure_name()).collect();
        writeln!(
            out,
            "alternativeAuthenticationNameSources: {}",
            names.join(", ")
        )?;
    }
    if warnings.is_empty() {
        writeln!(out, "problems: none")?;
    } else {
        writeln!(out, "warnings:")?;
        for w in &warnings {
            writeln!(out, "  - {w}")?;
        }
    }
    Ok(out)
}

/// `mqttgate thumbprint CERT`: the SHA-256 thumbprint of the first certificate in a file.
pub fn thumbprint(cert: &Path) -> Result<Thumbprint, CliError> {
    let bytes = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let der = match CertificateDer::pem_slice_iter(&bytes).next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(format!("{}: bad PEM: {e}", cert.display()).into()),
        // Not PEM: take the file as DER if it parses as a certificate.
        None => {
            if x509_parser::parse_x509_certificate(&bytes).is_err() {
                return Err(format!("{}: no certificate found", cert.display()).into());
            }
            CertificateDer::from(bytes)
        }
    };
    Ok(Thumbprint::of(&der))
}
