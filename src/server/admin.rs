//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (trust files loaded, upstream broker accepting TCP, not draining). Nothing
//! else. HTTP/1.1 is hyper's server (in the tree for the webhook client): one request per
//! connection, headers bounded by hyper's smallest buffer (8 KiB, answered 431 past it),
//! the whole exchange bounded in time, the number of connections capped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::server::Server;

/// hyper's smallest read buffer, which bounds the request head.
const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the answer written: the deadline of an admin connection.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Serves at most `max_connections` at once. Past that the newest connection is closed on
/// accept: the ones already open are probes and scrapes mid-request, and each is gone
/// within `REQUEST_DEADLINE`, so a flood of idle connections blocks the port for at most
/// that long after it stops.
pub async fn serve(listener: TcpListener, server: Arc<Server>, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            server.metrics.admin_refused.inc();
            drop(stream);
            continue;
        };
        let slot = Slot::new(permit, server.metrics.admin_open.clone());
        let server = server.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(REQUEST_DEADLINE, answer(stream, server, slot))
                .await
                .is_err()
            {
                debug!("admin request timed out");
            }
        });
    }
}

/// One admin connection's place under the cap, counted in `admin_connections_open`.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: Gauge) -> Slot {
        open.inc();
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One connection, one request: hyper reads and writes, `route` answers.
async fn answer(stream: TcpStream, server: Arc<Server>, slot: Slot) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(respond(&req, &server)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    drop(slot);
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
