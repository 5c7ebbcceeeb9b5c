//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (trust files loaded, upstream broker accepting TCP, not draining). Nothing
//! else. It speaks just enough HTTP/1.1 for probes and scrapers: one GET per connection,
//! headers bounded in size and time, then close. A full HTTP stack would be most of the
//! binary for three fixed answers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::server::Server;

const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the answer written: the read deadline of an admin connection.
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
            if let Err(e) =
                tokio::time::timeout(REQUEST_DEADLINE, answer(stream, &server, slot)).await
            {
                debug!(error = %e, "admin request timed out");
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

async fn answer(mut stream: TcpStream, server: &Server, slot: Slot) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(&mut stream, slot, 431, "text/plain", "request too large\n").await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, slot, 405, "text/plain", "only GET\n").await;
    }
    let head_only = method == "HEAD";
    let (status, content_type, body) = route(path.split('?').next().unwrap_or(""), server);
    let body = if head_only { String::new() } else { body };
    respond(&mut stream, slot, status, content_type, &body).await
}

fn route(path: &str, server: &Server) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            server.metrics.render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, why) = server.readiness();
            (
                if ready { 200 } else { 503 },
                "text/plain",
                format!("{why}\n"),
            )
        }
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Writes the answer and closes. The slot is given back first: a client holding its
/// answer can count on its place being free again.
async fn respond(
    stream: &mut TcpStream,
    slot: Slot,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    drop(slot);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
