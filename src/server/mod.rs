//! The accept loop, the connection limit, reloads and the shutdown sequence. One
//! connection's story is in `connection.rs`; this file only starts and stops them.

pub mod admin;
pub mod os_limits;
pub mod sessions;
pub mod slots;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::connection::{self, Ctx, Lifecycle};
use crate::metrics::Metrics;
use crate::server::slots::{AtAccept, Slots};
use crate::transport::proxy::Cidr;
use crate::transport::{Peer, Transport};
use crate::trust::{self, LoadError, Trust};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running mqttgate: its address, and the handles to reload and stop it.
pub struct Server {
    local_addr: SocketAddr,
    websocket_addr: Option<SocketAddr>,
    config: Config,
    trust_tx: watch::Sender<Arc<Trust>>,
    lifecycle_tx: watch::Sender<Lifecycle>,
    pub metrics: Arc<Metrics>,
    slots: Arc<Slots>,
    accept_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    admin_addr: SocketAddr,
    upstream_ok: AtomicBool,
}

impl Server {
    /// Loads everything the configuration names, binds the listener and starts accepting.
    /// A bad file is reported here, before the port opens.
    pub async fn start(config: Config) -> Result<Arc<Server>, StartError> {
        let trust = Trust::load(&config, 1)?;
        let backlog = config.limits.listen_backlog;
        let (listener, local_addr) = bind_listener(config.listen, backlog)?;
        let websocket = match &config.websocket {
            Some(ws) => Some(bind_listener(ws.listen, backlog)?),
            None => None,
        };
        let admin = TcpListener::bind(config.admin_listen).await;
        let (admin, admin_addr) = with_addr(admin, config.admin_listen)?;
        let metrics = Arc::new(Metrics::new());
        warn_skipped(&trust);
        metrics.observe_trust(&trust);
        metrics.last_reload.set(trust::unix_now());
        let (trust_tx, trust_rx) = trust::publish(trust);
        let (lifecycle_tx, lifecycle_rx) = watch::channel(Lifecycle::Running);
        let state = |state| {
            metrics
                .pending
                .get_or_create(&crate::metrics::PendingState { state })
                .clone()
        };
        let gauges = [state("queued"), state("idle"), state("progressing")];
        let slots = Slots::with_gauges(&config.limits, gauges);
        let ctx = Arc::new(connection_ctx(
            &config,
            trust_rx,
            lifecycle_rx,
            metrics.clone(),
            slots.clone(),
        ));
        let server = Arc::new(Server {
            local_addr,
            websocket_addr: websocket.as_ref().map(|(_, addr)| *addr),
            slots,
            config,
            trust_tx,
            lifecycle_tx,
            metrics,
            accept_tasks: std::sync::Mutex::new(Vec::new()),
            background: std::sync::Mutex::new(Vec::new()),
            admin_addr,
            upstream_ok: AtomicBool::new(false),
        });
        // Readiness needs a first answer before the listener is announced.
        server.check_upstream().await;
        server.spawn_background(admin);
        server.spawn_accept_loops(listener, websocket, ctx);
        info!(listen = %local_addr, upstream = %server.config.upstream, "mqttgate listening");
        Ok(server)
    }

    /// The admin listener, the upstream checker and the file watcher.
    fn spawn_background(self: &Arc<Server>, admin: TcpListener) {
        let mut background = vec![
            tokio::spawn(crate::server::admin::serve(
                admin,
                self.clone(),
                self.config.admin_max_connections,
            )),
            tokio::spawn(upstream_checker(self.clone())),
        ];
        if let Some(every) = self.config.watch_interval {
            background.push(tokio::spawn(watch_files(self.clone(), every)));
        }
        *self.background.lock().expect("not poisoned") = background;
    }

    /// One accept loop per listener: the TLS one, and the WebSocket one when configured.
    fn spawn_accept_loops(
        self: &Arc<Server>,
        listener: TcpListener,
        websocket: Option<(TcpListener, SocketAddr)>,
        ctx: Arc<Ctx>,
    ) {
        let mut tasks = vec![tokio::spawn(accept_loop(
            self.clone(),
            listener,
            Transport::Tls,
            self.config.inbound_proxy.clone(),
            ctx.clone(),
        ))];
        if let (Some((listener, addr)), Some(ws)) = (websocket, &self.config.websocket) {
            tasks.push(tokio::spawn(accept_loop(
                self.clone(),
                listener,
                Transport::WebSocket,
                ws.inbound_proxy.clone(),
                ctx,
            )));
            info!(listen = %addr, path = %ws.rules.path, "mqttgate listening for MQTT over WebSockets");
        }
        *self.accept_tasks.lock().expect("not poisoned") = tasks;
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket listener's address, when `[websocket]` is configured.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `/readyz`: serving, and the broker accepted a TCP connection at the last check.
    pub fn readiness(&self) -> (bool, &'static str) {
        let (ready, why) = if self.lifecycle() != Lifecycle::Running {
            (false, "draining")
        } else if !self.upstream_ok.load(Ordering::Relaxed) {
            (false, "upstream broker not accepting connections")
        } else {
            (true, "ready")
        };
        self.metrics.ready.set(ready as i64);
        (ready, why)
    }

    async fn check_upstream(&self) {
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(&self.config.upstream)
            )
            .await,
            Ok(Ok(_))
        );
        self.upstream_ok.store(ok, Ordering::Relaxed);
        self.metrics.upstream_up.set(ok as i64);
        self.readiness();
    }

    /// The trust state new connections see now.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust_tx.borrow().clone()
    }

    pub fn lifecycle(&self) -> Lifecycle {
        *self.lifecycle_tx.borrow()
    }

    /// Reads every file again. On success new connections see the new state at once and
    /// every live session is re-decided; on failure nothing changes.
    pub fn reload(&self) -> Result<u64, LoadError> {
        // The published state carries its own generation; nothing else to keep in step.
        let generation = self.trust().generation + 1;
        match Trust::load(&self.config, generation) {
            Ok(trust) => {
                warn_skipped(&trust);
                self.metrics.observe_trust(&trust);
                self.trust_tx.send_replace(Arc::new(trust));
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::Reload {
                        component: "all",
                        result: "success",
                    })
                    .inc();
                self.metrics.last_reload.set(trust::unix_now());
                info!(generation, "reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::Reload {
                        component: e.component(),
                        result: "failure",
                    })
                    .inc();
                error!(component = e.component(), error = %e, "reload failed; keeping the previous state");
                Err(e)
            }
        }
    }

    /// The documented shutdown sequence: not ready, stop accepting, MQTT 5 sessions told
    /// to go, everyone given `drain_timeout`, then the rest closed.
    pub async fn shutdown(&self) {
        self.lifecycle_tx.send_replace(Lifecycle::Draining);
        self.readiness();
        let tasks = std::mem::take(&mut *self.accept_tasks.lock().expect("not poisoned"));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let drained = tokio::time::timeout(self.config.limits.drain_timeout, self.idle()).await;
        if drained.is_err() {
            warn!("drain time over; closing the remaining sessions");
            self.lifecycle_tx.send_replace(Lifecycle::Closing);
            // Each session ends within its boundary grace and linger time.
            let _ = tokio::time::timeout(Duration::from_secs(10), self.idle()).await;
        }
        for task in self.background.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
        info!("stopped");
    }

    /// Resolves once no connection holds a slot.
    async fn idle(&self) {
        self.slots.idle().await;
    }
}

/// SPEC §7: an expired CA certificate is left out and said so, never failing the load.
fn warn_skipped(trust: &Trust) {
    for skipped in &trust.anchors.skipped {
        warn!(ca = %skipped, "registered CA certificate has expired and is not loaded");
    }
}

/// A client listener bound with the configured backlog, and the address it got.
fn bind_listener(addr: SocketAddr, backlog: u32) -> Result<(TcpListener, SocketAddr), StartError> {
    with_addr(bind(addr, backlog), addr)
}

/// The listener and its local address (port 0 resolved), or the error naming `addr`.
fn with_addr(
    bound: std::io::Result<TcpListener>,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen = |source| StartError::Listen { addr, source };
    let listener = bound.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

/// What every connection shares, from the configuration and the published state.
fn connection_ctx(
    config: &Config,
    trust: trust::TrustWatch,
    lifecycle: watch::Receiver<Lifecycle>,
    metrics: Arc<Metrics>,
    slots: Arc<Slots>,
) -> Ctx {
    // The configuration is the effective one: audit mode's overrides (SPEC §12) were
    // applied once, when it was validated.
    Ctx {
        limits: config.limits.clone(),
        upstream: config.upstream.clone(),
        upstream_policy: config.upstream_policy(),
        reason_strings: config.reason_strings,
        websocket: config.websocket.as_ref().map(|ws| ws.rules.clone()),
        trust,
        lifecycle,
        metrics,
        denial_log: Default::default(),
        slots,
        sessions: sessions::Sessions::new(
            config.sessions.max_per_authentication_name,
            config.sessions.connects_per_second,
        ),
        audit_only: config.audit_only,
        authz_mode: config.authorization.as_ref().map(|a| a.mode),
        webhook: config.webhook.clone().map(crate::connection::Webhook::new),
    }
}

/// Binds the client listener with the configured accept queue (tokio's own bind asks for
/// 128, which a fleet reconnecting at once overflows into SYN retries), with SO_REUSEADDR
/// as tokio's bind sets it.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let max = crate::server::os_limits::somaxconn();
    let effective = crate::server::os_limits::effective_backlog(backlog, max);
    if effective < backlog {
        warn!(
            listen_backlog = backlog,
            somaxconn = effective,
            "listen_backlog {backlog} is capped by net.core.somaxconn {effective}; raise the sysctl for a larger accept queue"
        );
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn upstream_checker(server: Arc<Server>) {
    loop {
        tokio::time::sleep(server.config.upstream_check_interval).await;
        server.check_upstream().await;
    }
}

/// What the watcher last saw of one file: its metadata through any symlinks, and the
/// SHA-256 of the content that had that metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    stamp: Option<Stamp>,
    hash: Option<[u8; 32]>,
}

/// The metadata that changes when a file's content may have. `ctime` is in it because
/// every write sets it and nothing can set it back, so an edit that keeps the size and
/// restores the mtime is still seen. `target`: Kubernetes updates a mounted ConfigMap or
/// Secret by swapping a `..data` symlink, which leaves the path's own metadata unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    target: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(file: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(file).ok()?;
    let m = std::fs::metadata(&target).ok()?;
    Some(Stamp {
        target,
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn hash(file: &Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(file).ok()?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Some(out)
}

/// The files' state now, hashing only those whose metadata differs from `last`, so an
/// idle check costs a few `stat` calls whatever the files' sizes. Also says how many
/// files it read.
fn fingerprint(files: &[PathBuf], last: &[Seen]) -> (Vec<Seen>, usize) {
    let mut hashed = 0;
    let now = files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let stamp = stamp(file);
            match last.get(i) {
                Some(seen) if stamp.is_some() && seen.stamp == stamp => seen.clone(),
                _ => {
                    hashed += 1;
                    Seen {
                        hash: hash(file),
                        stamp,
                    }
                }
            }
        })
        .collect();
    (now, hashed)
}

/// Contents decide: a file touched but unchanged does not reload.
fn contents_changed(last: &[Seen], now: &[Seen]) -> bool {
    last.len() != now.len() || last.iter().zip(now).any(|(a, b)| a.hash != b.hash)
}

async fn watch_files(server: Arc<Server>, every: Duration) {
    let (mut last, _) = fingerprint(&server.config.watched_files(), &[]);
    loop {
        tokio::time::sleep(every).await;
        // Asked again each time: a registry directory may have gained or lost a file.
        let (files2, last2) = (server.config.watched_files(), last.clone());
        let Ok((now, _)) = tokio::task::spawn_blocking(move || fingerprint(&files2, &last2)).await
        else {
            continue;
        };
        if contents_changed(&last, &now) {
            info!("trust files changed; reloading");
            // A failed reload keeps the old state; the next change tries again.
            let _ = server.reload();
        }
        last = now;
    }
}

/// Accepts on one listener. Both listeners share the pending and session slots: the
/// limits are the server's, whatever port a client picked.
async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    transport: Transport,
    inbound_proxy: Option<Vec<Cidr>>,
    ctx: Arc<Ctx>,
) {
    loop {
        // Past the pending cap, stop accepting (new connections wait in the backlog) unless
        // an idle pending connection can be shed for the next one (slots.rs).
        let permit = server.slots.pending_slot().await;
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning; connections already
                // open are unaffected.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        server.metrics.accepted.inc();
        let accepted = std::time::Instant::now();
        let local = tcp.local_addr().unwrap_or(server.local_addr);
        let peer = Peer::direct(peer, local, transport);
        let _ = tcp.set_nodelay(true);
        if let Some(trusted) = &inbound_proxy {
            // SPEC §8: only a trusted load balancer may speak for a client; its header names
            // the client, and that address is the one the pending slots see.
            if !trusted.iter().any(|net| net.contains(peer.ip())) {
                let outcome = connection::Outcome::Refused(connection::Refused::Proxy(
                    connection::ProxyRefusal::Untrusted,
                ));
                connection::record(&ctx, peer, accepted, &outcome);
                continue;
            }
        }
        let permit = match permit {
            Some(permit) => permit,
            // Nothing is shed for a connection that is closed at once anyway (a proxied one
            // learns it once its header names the client).
            None if inbound_proxy.is_none() && server.slots.over_limit() => {
                refuse_at_accept(&server, &ctx, tcp, peer, accepted, AtAccept::OverLimit);
                continue;
            }
            None => server.slots.make_room().await.0,
        };
        // Its connect deadline starts now: if nothing was idle any more, it waited for a
        // slot as it would have in the backlog, and that wait is not its time to connect.
        let accepted = std::time::Instant::now();
        if inbound_proxy.is_some() {
            tokio::spawn(connection::serve_proxied(
                ctx.clone(),
                tcp,
                peer,
                permit,
                accepted,
            ));
            continue;
        }
        let pending = match server.slots.admit(permit, peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                refuse_at_accept(&server, &ctx, tcp, peer, accepted, why);
                continue;
            }
        };
        tokio::spawn(connection::serve(ctx.clone(), tcp, peer, pending, accepted));
    }
}

/// Closes a connection at accept, with no TLS work at all, and records why.
fn refuse_at_accept(
    server: &Server,
    ctx: &Ctx,
    tcp: tokio::net::TcpStream,
    peer: Peer,
    accepted: std::time::Instant,
    why: AtAccept,
) {
    if why == AtAccept::OverLimit {
        server.metrics.refused_at_limit.inc();
    }
    drop(tcp);
    let outcome = connection::Outcome::Refused(connection::Refused::AtAccept(why));
    connection::record(ctx, peer, accepted, &outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctime(file: &Path) -> (i64, i64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(file).unwrap();
        (m.ctime(), m.ctime_nsec())
    }

    /// Writes `content` until the file's ctime differs from `old`: the kernel stamps
    /// with a coarse clock, so two writes within one tick can share a timestamp.
    fn write_in_a_new_tick(file: &Path, content: &str, old: (i64, i64)) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            std::fs::write(file, content).unwrap();
            if ctime(file) != old {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "ctime never moved");
            std::thread::yield_now();
        }
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let tmp = crate::trust::cert::tests::TempDir::new("watch-unchanged");
        let files = vec![tmp.path("a.json"), tmp.path("b.pem")];
        std::fs::write(&files[0], "[]").unwrap();
        std::fs::write(&files[1], "pem").unwrap();
        let (first, hashed) = fingerprint(&files, &[]);
        assert_eq!(hashed, 2);
        let (second, hashed) = fingerprint(&files, &first);
        assert_eq!(hashed, 0);
        assert!(!contents_changed(&first, &second));
    }

    #[test]
    fn same_size_edit_with_the_mtime_restored_is_seen() {
        let tmp = crate::trust::cert::tests::TempDir::new("watch-mtime");
        let files = vec![tmp.path("clients.json")];
        std::fs::write(&files[0], "[1]").unwrap();
        let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
        let (before, _) = fingerprint(&files, &[]);
        write_in_a_new_tick(&files[0], "[2]", ctime(&files[0]));
        std::fs::File::options()
            .write(true)
            .open(&files[0])
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(
            std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
            mtime
        );
        let (after, hashed) = fingerprint(&files, &before);
        assert_eq!(hashed, 1);
        assert!(contents_changed(&before, &after));
    }

    #[test]
    fn swapped_data_symlink_is_seen_and_a_touch_alone_does_not_reload() {
        let tmp = crate::trust::cert::tests::TempDir::new("watch-symlink");
        let (v1, v2) = (tmp.path("v1"), tmp.path("v2"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("clients.json"), "[1]").unwrap();
        std::fs::write(v2.join("clients.json"), "[2]").unwrap();
        let data = tmp.path("..data");
        std::os::unix::fs::symlink(&v1, &data).unwrap();
        let file = tmp.path("clients.json");
        std::os::unix::fs::symlink(data.join("clients.json"), &file).unwrap();
        let files = vec![file];
        let (before, _) = fingerprint(&files, &[]);

        let next = tmp.path("..data_tmp");
        std::os::unix::fs::symlink(&v2, &next).unwrap();
        std::fs::rename(&next, &data).unwrap();
        let (after, hashed) = fingerprint(&files, &before);
        assert_eq!(hashed, 1);
        assert!(contents_changed(&before, &after));

        // Rewritten with the same bytes: read again, but no reload.
        let inner = v2.join("clients.json");
        write_in_a_new_tick(&inner, "[2]", ctime(&inner));
        let (touched, hashed) = fingerprint(&files, &after);
        assert_eq!(hashed, 1);
        assert!(!contents_changed(&after, &touched));
    }
}
