//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (trust files loaded, upstream broker accepting TCP, not draining). Nothing
//! else. HTTP/1.1 is hyper's server (in the tree for the webhook client): one request per
//! connection, headers bounded by hyper's smallest buffer (8 KiB, answered 431 past it),
//! the request head bounded in time (`HEADER_DEADLINE`), the whole exchange too
//! (`REQUEST_DEADLINE`), the number of connections capped.
//!
//! Past the cap the oldest *idle* connection (no complete request head yet) is closed to
//! make room, as on the client listeners (server/slots.rs): a flood of idle connections
//! can never keep a scrape or a probe out, since each new one sheds an idle one and sends
//! its request at once. Only when every open connection is being answered is the newest
//! closed instead, and answers take milliseconds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::debug;

use crate::server::Server;

/// hyper's smallest read buffer, which bounds the request head.
const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the answer written: the deadline of an admin connection.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// From accept to a complete request head: Prometheus and kubelet send theirs at once.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);

/// The open admin connections in accept order (ids only grow).
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
}

/// One open admin connection as the accept loop sees it.
#[derive(Default)]
struct Conn {
    /// Its request head is complete: it is being answered, never shed.
    answering: AtomicBool,
    /// Told to close to make room for a newer one.
    shed: Notify,
}

/// A connection let in: its id under the cap, and what the accept loop tells it.
type Admitted = (u64, Arc<Conn>);

impl Open {
    /// Makes room for a new connection under `max`: the oldest idle one is taken out (to
    /// be told to close) when the cap is full; then the newcomer is registered, unless
    /// every open one is being answered.
    fn admit(&mut self, max: usize) -> (Option<Arc<Conn>>, Option<Admitted>) {
        let mut shed = None;
        if self.conns.len() >= max {
            let oldest_idle = self
                .conns
                .iter()
                .find(|(_, c)| !c.answering.load(Ordering::Acquire))
                .map(|(&id, _)| id);
            shed = oldest_idle.and_then(|id| self.conns.remove(&id));
        }
        if self.conns.len() >= max {
            return (shed, None);
        }
        let id = self.next_id;
        self.next_id += 1;
        let conn = Arc::new(Conn::default());
        self.conns.insert(id, conn.clone());
        (shed, Some((id, conn)))
    }
}

/// Serves at most `max_connections` at once; past that the oldest idle one is closed (and
/// counted in `admin_connections_refused_total`) for the newcomer, or, if every one is
/// being answered, the newcomer is.
pub async fn serve(listener: TcpListener, server: Arc<Server>, max_connections: usize) {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (shed, admitted) = open.lock().expect("not poisoned").admit(max_connections);
        if let Some(shed) = shed {
            // Stored if its task is not waiting yet: seen on its next poll.
            shed.shed.notify_one();
            server.metrics.admin_refused.inc();
        }
        let Some((id, conn)) = admitted else {
            server.metrics.admin_refused.inc();
            drop(stream);
            continue;
        };
        let slot = Slot {
            id,
            open: open.clone(),
            gauge: server.metrics.admin_open.clone(),
        };
        slot.gauge.inc();
        let server = server.clone();
        tokio::spawn(async move {
            let answered = tokio::time::timeout(REQUEST_DEADLINE, answer(stream, server, &conn));
            tokio::select! {
                // A shed connection's place is already the newcomer's.
                _ = conn.shed.notified() => debug!("idle admin connection shed"),
                done = answered => {
                    if done.is_err() {
                        debug!("admin request timed out");
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One admin connection's place under the cap, counted in `admin_connections_open`;
/// given back on drop (unless it was shed, which took it already).
struct Slot {
    id: u64,
    open: Arc<Mutex<Open>>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open
            .lock()
            .expect("not poisoned")
            .conns
            .remove(&self.id);
        self.gauge.dec();
    }
}

/// One connection, one request: hyper reads and writes, `route` answers.
async fn answer(stream: TcpStream, server: Arc<Server>, conn: &Conn) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // The head is complete: from here this connection is never shed.
        conn.answering.store(true, Ordering::Release);
        let server = server.clone();
        async move { Ok::<_, Infallible>(respond(&req, &server)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "admin connection failed");
    }
}

fn respond(req: &Request<Incoming>, server: &Server) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match *req.method() {
        Method::GET | Method::HEAD => route(req.uri().path(), server),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    // hyper leaves a HEAD answer's body out itself, keeping its length.
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("a valid header"));
    headers.insert(CONNECTION, "close".parse().expect("a valid header"));
    response
}

fn route(path: &str, server: &Server) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            server.metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, why) = server.readiness();
            let status = match ready {
                true => StatusCode::OK,
                false => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, "text/plain", format!("{why}\n"))
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_the_oldest_idle_goes_and_answering_ones_stay() {
        let mut open = Open::default();
        let (_, a) = open.admit(2);
        let (_, b) = open.admit(2);
        let (a, b) = (a.unwrap(), b.unwrap());
        a.1.answering.store(true, Ordering::Release);
        // Full: `a` is being answered, so `b`, the oldest idle one, makes room.
        let (shed, c) = open.admit(2);
        assert!(Arc::ptr_eq(&shed.unwrap(), &b.1));
        let c = c.unwrap();
        assert_eq!(open.conns.keys().copied().collect::<Vec<_>>(), [a.0, c.0]);
        // Every one answering: the newcomer is the one refused, nothing is shed.
        c.1.answering.store(true, Ordering::Release);
        let (shed, d) = open.admit(2);
        assert!(shed.is_none() && d.is_none());
        assert_eq!(open.conns.len(), 2);
    }
}
