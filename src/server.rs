//! The accept loop, the connection limit, reloads and the shutdown sequence. One
//! connection's story is in `connection.rs`; this file only starts and stops them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::connection::{self, Admission, Ctx, Lifecycle};
use crate::metrics::Metrics;
use crate::state::{self, LoadError, Trust};

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
    config: Config,
    trust_tx: watch::Sender<Arc<Trust>>,
    lifecycle_tx: watch::Sender<Lifecycle>,
    pub metrics: Arc<Metrics>,
    normal: Arc<Semaphore>,
    busy: Arc<Semaphore>,
    accept_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    admin_addr: SocketAddr,
    upstream_ok: AtomicBool,
}

impl Server {
    /// Loads everything the configuration names, binds the listener and starts accepting.
    /// A bad file is reported here, before the port opens.
    pub async fn start(config: Config) -> Result<Arc<Server>, StartError> {
        let trust = Trust::load(&config, 1)?;
        let listener = bind(config.listen, config.limits.listen_backlog).map_err(|source| {
            StartError::Listen {
                addr: config.listen,
                source,
            }
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.admin_listen,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Listen {
            addr: config.admin_listen,
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        metrics.observe_trust(&trust);
        metrics.last_reload.set(state::unix_now());
        let (trust_tx, trust_rx) = state::publish(trust);
        let (lifecycle_tx, lifecycle_rx) = watch::channel(Lifecycle::Running);
        let ctx = Arc::new(Ctx {
            limits: config.limits.clone(),
            upstream: config.upstream.clone(),
            username_mode: config.username_mode,
            client_id_mode: config.client_id_mode,
            reason_strings: config.reason_strings,
            trust: trust_rx,
            lifecycle: lifecycle_rx,
            metrics: metrics.clone(),
            denial_log: Default::default(),
        });
        let server = Arc::new(Server {
            local_addr,
            normal: Arc::new(Semaphore::new(config.limits.max_connections)),
            busy: Arc::new(Semaphore::new(config.limits.busy_answers)),
            config,
            trust_tx,
            lifecycle_tx,
            metrics,
            accept_task: std::sync::Mutex::new(None),
            background: std::sync::Mutex::new(Vec::new()),
            admin_addr,
            upstream_ok: AtomicBool::new(false),
        });
        // Readiness needs a first answer before the listener is announced.
        server.check_upstream().await;
        let mut background = vec![
            tokio::spawn(crate::admin::serve(
                admin,
                server.clone(),
                server.config.admin_max_connections,
            )),
            tokio::spawn(upstream_checker(server.clone())),
        ];
        if let Some(every) = server.config.watch_interval {
            background.push(tokio::spawn(watch_files(server.clone(), every)));
        }
        *server.background.lock().expect("not poisoned") = background;
        let task = tokio::spawn(accept_loop(server.clone(), listener, ctx));
        *server.accept_task.lock().expect("not poisoned") = Some(task);
        info!(listen = %local_addr, upstream = %server.config.upstream, "mqttgate listening");
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
                self.metrics.observe_trust(&trust);
                self.trust_tx.send_replace(Arc::new(trust));
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::Reload {
                        component: "all",
                        result: "success",
                    })
                    .inc();
                self.metrics.last_reload.set(state::unix_now());
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
        let task = self.accept_task.lock().expect("not poisoned").take();
        if let Some(task) = task {
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

    /// Resolves once no connection task holds a permit.
    async fn idle(&self) {
        let n = self.config.limits.max_connections as u32;
        let b = self.config.limits.busy_answers as u32;
        let _all = self.normal.acquire_many(n).await;
        if b > 0 {
            let _busy = self.busy.acquire_many(b).await;
        }
    }
}

/// Binds the client listener with the configured accept queue (tokio's own bind asks for
/// 128, which a fleet reconnecting at once overflows into SYN retries), with SO_REUSEADDR
/// as tokio's bind sets it.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let max = crate::os_limits::somaxconn();
    let effective = crate::os_limits::effective_backlog(backlog, max);
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

/// A fingerprint of the watched files' contents. Contents, not modification times:
/// Kubernetes updates a mounted ConfigMap or Secret by swapping a `..data` symlink, which
/// leaves the paths' own metadata unchanged.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    files
        .iter()
        .map(|f| {
            std::fs::read(f).ok().map(|bytes| {
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
                let mut out = [0u8; 32];
                out.copy_from_slice(d.as_ref());
                out
            })
        })
        .collect()
}

async fn watch_files(server: Arc<Server>, every: Duration) {
    let files = server.config.watched_files();
    let mut last = fingerprint(&files);
    loop {
        tokio::time::sleep(every).await;
        let files2 = files.clone();
        let now = tokio::task::spawn_blocking(move || fingerprint(&files2))
            .await
            .unwrap_or_default();
        if now != last {
            info!("trust files changed; reloading");
            // A failed reload keeps the old state; the next change tries again.
            let _ = server.reload();
            last = now;
        }
    }
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
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
        let Some((permit, admission)) = admit(&server) else {
            // Past the limit and its busy answers: no TLS work at all.
            server.metrics.refused_at_limit.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let metrics = server.metrics.clone();
        tokio::spawn(async move {
            metrics.active.inc();
            connection::serve(ctx, tcp, peer, admission).await;
            metrics.active.dec();
            drop(permit);
        });
    }
}

fn admit(server: &Server) -> Option<(OwnedSemaphorePermit, Admission)> {
    if let Ok(p) = server.normal.clone().try_acquire_owned() {
        return Some((p, Admission::Normal));
    }
    server
        .busy
        .clone()
        .try_acquire_owned()
        .ok()
        .map(|p| (p, Admission::Busy))
}
