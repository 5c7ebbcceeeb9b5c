//! The accept loop, the connection limit, reloads and the shutdown sequence. One
//! connection's story is in `connection.rs`; this file only starts and stops them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
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
    generation: AtomicU64,
    pub metrics: Arc<Metrics>,
    normal: Arc<Semaphore>,
    busy: Arc<Semaphore>,
    accept_task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Loads everything the configuration names, binds the listener and starts accepting.
    /// A bad file is reported here, before the port opens.
    pub async fn start(config: Config) -> Result<Arc<Server>, StartError> {
        let trust = Trust::load(&config, 1)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let (trust_tx, trust_rx) = state::publish(trust);
        let (lifecycle_tx, lifecycle_rx) = watch::channel(Lifecycle::Running);
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(Ctx {
            limits: config.limits.clone(),
            upstream: config.upstream.clone(),
            username_mode: config.username_mode,
            client_id_mode: config.client_id_mode,
            reason_strings: config.reason_strings,
            trust: trust_rx,
            lifecycle: lifecycle_rx,
            metrics: metrics.clone(),
        });
        let server = Arc::new(Server {
            local_addr,
            normal: Arc::new(Semaphore::new(config.limits.max_connections)),
            busy: Arc::new(Semaphore::new(config.limits.busy_answers)),
            config,
            trust_tx,
            lifecycle_tx,
            generation: AtomicU64::new(1),
            metrics,
            accept_task: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(server.clone(), listener, ctx));
        *server.accept_task.lock().expect("not poisoned") = Some(task);
        info!(listen = %local_addr, upstream = %server.config.upstream, "mqttgate listening");
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn config(&self) -> &Config {
        &self.config
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
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        match Trust::load(&self.config, generation) {
            Ok(trust) => {
                self.generation.store(generation, Ordering::SeqCst);
                self.trust_tx.send_replace(Arc::new(trust));
                info!(generation, "reloaded");
                Ok(generation)
            }
            Err(e) => {
                error!(component = e.component(), error = %e, "reload failed; keeping the previous state");
                Err(e)
            }
        }
    }

    /// The documented shutdown sequence: not ready, stop accepting, MQTT 5 sessions told
    /// to go, everyone given `drain_timeout`, then the rest closed.
    pub async fn shutdown(&self) {
        self.lifecycle_tx.send_replace(Lifecycle::Draining);
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
