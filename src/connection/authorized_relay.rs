//! The relay of a session under topic-space authorization (SPEC §11), chosen once per
//! session when `[authorization]` is configured, and of every JWT session, which may
//! re-authenticate (SPEC §9; without `[authorization]` it checks no topic). Other
//! sessions run the plain [`crate::transport::relay::Relay`], unchanged.
//!
//! Client -> broker, the relay reads packets at their boundaries: a PUBLISH is held only
//! until its head (topic, packet identifier, properties) is in, decided, then its payload
//! streams through (or is skipped) without being buffered; a SUBSCRIBE is held whole (it
//! is small) and may be cut down; an MQTT 5 AUTH is held whole, never forwarded, and
//! handed up to the session ([`Ended::Reauthenticate`]), which decides it and may queue
//! mqttgate's answer ([`AuthorizedRelay::answer`]); nothing after it is read until then.
//! Every other packet streams through. Decided bytes are
//! written from the same pooled buffer they were read into, moved down over dropped
//! packets, so a message costs a header parse and a lookup, not a copy.
//!
//! Broker -> client, bytes are copied as the plain relay does, with two exceptions that
//! need packet boundaries: packets mqttgate writes to the client (a PUBACK 0x87, its own
//! SUBACK) go in only between broker packets, and while a cut-down SUBSCRIBE waits for
//! its SUBACK, broker SUBACKs are read whole so that one can be merged.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::authorize::{Authorizer, Publish, Stop, Subscribed};
use crate::mqtt::client_packets::{self as packets, PUBLISH, SUBACK, SUBSCRIBE};
use crate::mqtt::{PacketBoundary, Version};
use crate::transport::pool;
use crate::transport::relay::Ended;

/// The largest packet head (PUBLISH up to its payload) or SUBSCRIBE held to decide it; a
/// client needing more is closed. Topics are at most 64 KiB; the rest is room for
/// properties.
pub const MAX_INSPECTED: usize = 256 * 1024;
/// Packets waiting for the client past this, and the relay stops reading the client
/// until they are written: a client that floods denied PUBLISHes without reading its
/// PUBACKs is held back, not buffered.
const MAX_TO_CLIENT: usize = 64 * 1024;
/// The largest AUTH held: room for a token well past the 8 KiB a token may have (a longer
/// one is refused by the token check, as at CONNECT); a packet past this is not read.
pub const MAX_AUTH: usize = 64 * 1024;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Where the client -> broker direction is in the packet stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cur {
    /// At a packet boundary: the next bytes are a fixed header.
    Boundary,
    /// Forwarding this many more bytes of an allowed packet.
    Pass(usize),
    /// Skipping this many more bytes of a dropped packet.
    Drop(usize),
}

/// Client -> broker. Invariant: `pos <= ready <= scan <= end`; `[pos, ready)` is decided
/// and to be written, `[ready, scan)` was dropped, `[scan, end)` is not decided yet.
#[derive(Debug)]
struct Up {
    buf: Option<Box<[u8]>>,
    pos: usize,
    ready: usize,
    scan: usize,
    end: usize,
    cur: Cur,
    /// The first byte of the last packet forwarded whole.
    last: u8,
    read_done: bool,
    shut: bool,
    need_flush: bool,
    bytes: u64,
    counter: Counter,
    /// Authorization ends the session once what was decided before is written.
    stop: Option<Stop>,
    /// An AUTH packet (or its length, past `MAX_AUTH`), handed up once what was decided
    /// before it is written.
    auth: Option<Result<Vec<u8>, usize>>,
}

/// Broker -> client. `[pos, fed)` has been fed to `boundary` and is to be written;
/// `[fed, end)` is read but not yet looked at.
#[derive(Debug)]
struct Down {
    buf: Option<Box<[u8]>>,
    pos: usize,
    fed: usize,
    end: usize,
    boundary: PacketBoundary,
    read_done: bool,
    shut: bool,
    need_flush: bool,
    bytes: u64,
    counter: Counter,
}

/// Packets mqttgate writes to the client, queued until the broker stream is between
/// packets.
#[derive(Debug, Default)]
struct ToClient {
    bytes: Vec<u8>,
    pos: usize,
}

impl ToClient {
    fn pending(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

/// Both directions of one authorized session.
#[derive(Debug)]
pub struct AuthorizedRelay {
    auth: Authorizer,
    version: Version,
    up: Up,
    down: Down,
    to_client: ToClient,
    stop: Option<Stop>,
    first_eof: Option<bool>,
    half_close_reported: bool,
}

impl AuthorizedRelay {
    /// Starts after the CONNECT and CONNACK: `pipelined` is what the client sent after
    /// its CONNECT (decided like everything after it), `down` the broker stream's
    /// boundary state after the CONNACK and whatever followed it.
    pub fn new(
        auth: Authorizer,
        version: Version,
        pipelined: Vec<u8>,
        down: PacketBoundary,
        counters: (Counter, Counter),
    ) -> AuthorizedRelay {
        let (up_counter, down_counter) = counters;
        let mut up = Up {
            buf: None,
            pos: 0,
            ready: 0,
            scan: 0,
            end: 0,
            cur: Cur::Boundary,
            last: 0,
            read_done: false,
            shut: false,
            need_flush: false,
            bytes: 0,
            counter: up_counter,
            stop: None,
            auth: None,
        };
        if !pipelined.is_empty() {
            let mut buf = pool::take();
            if buf.len() < pipelined.len() {
                buf = vec![0; pipelined.len()].into_boxed_slice();
            }
            buf[..pipelined.len()].copy_from_slice(&pipelined);
            up.end = pipelined.len();
            up.buf = Some(buf);
        }
        AuthorizedRelay {
            auth,
            version,
            up,
            down: Down {
                buf: None,
                pos: 0,
                fed: 0,
                end: 0,
                boundary: down,
                read_done: false,
                shut: false,
                need_flush: false,
                bytes: 0,
                counter: down_counter,
            },
            to_client: ToClient::default(),
            stop: None,
            first_eof: None,
            half_close_reported: false,
        }
    }

    pub fn authorizer(&mut self) -> &mut Authorizer {
        &mut self.auth
    }

    /// Queues a packet of mqttgate's own for the client (the answer to an AUTH), written
    /// between broker packets.
    pub fn answer(&mut self, packet: &[u8]) {
        self.to_client.bytes.extend_from_slice(packet);
    }

    /// Bytes written to the broker and to the client by this relay.
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Which side closed first, once one has: the client (true) or the broker (false).
    pub fn first_to_close(&self) -> Option<bool> {
        self.first_eof
    }

    fn client_disconnected(&self) -> bool {
        self.up.cur == Cur::Boundary && self.up.last >> 4 == DISCONNECT
    }

    /// Relays both ways until both directions have ended, or authorization ends the
    /// session; reports a half close once, as the plain relay does.
    pub async fn run<C, U>(&mut self, client: &mut C, upstream: &mut U) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        poll_fn(|cx| self.poll_both(cx, client, upstream)).await
    }

    fn poll_both<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
    ) -> Poll<Ended>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        if let Some(stop) = self.stop {
            return Poll::Ready(ended(stop));
        }
        let up = self.up.poll(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *upstream),
            &mut self.auth,
            self.version,
            &mut self.to_client,
        );
        let up = match up {
            Poll::Ready(Err(UpError::Stop(stop))) => {
                self.stop = Some(stop);
                return Poll::Ready(ended(stop));
            }
            Poll::Ready(Err(UpError::Io(e))) => return Poll::Ready(self.error_or_client(e)),
            Poll::Ready(Err(UpError::Auth(packet))) => {
                return Poll::Ready(Ended::Reauthenticate(packet))
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        };
        if up.is_ready() && self.first_eof.is_none() {
            self.first_eof = Some(true);
        }
        let queued = self.to_client.pending();
        let down = self.down.poll(
            cx,
            Pin::new(&mut *upstream),
            Pin::new(&mut *client),
            &mut self.auth,
            &mut self.to_client,
            false,
        );
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(self.error_or_client(e));
        }
        // The client direction may be held back for the queue this just wrote.
        if queued >= MAX_TO_CLIENT && self.to_client.pending() < MAX_TO_CLIENT {
            cx.waker().wake_by_ref();
        }
        if down.is_ready() && self.first_eof.is_none() {
            self.first_eof = Some(false);
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(
                if self.first_eof == Some(true) || self.client_disconnected() {
                    Ended::Client
                } else {
                    Ended::Upstream
                },
            );
        }
        if self.first_eof.is_some() && !self.half_close_reported {
            self.half_close_reported = true;
            return Poll::Ready(Ended::HalfClosed);
        }
        Poll::Pending
    }

    fn error_or_client(&self, e: io::Error) -> Ended {
        if self.client_disconnected() {
            Ended::Client
        } else {
            Ended::Error(e)
        }
    }

    /// As the plain relay's: stop reading the client (what is decided is still written),
    /// forward broker bytes to the end of the packet in progress, and write what mqttgate
    /// queued for the client; then the caller may send a DISCONNECT.
    pub async fn finish_at_boundary<C, U>(
        &mut self,
        client: &mut C,
        upstream: &mut U,
    ) -> io::Result<()>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        self.up.read_done = true;
        // Undecided bytes are dropped; a dropped packet's rest is not read.
        self.up.scan = self.up.end;
        self.up.cur = Cur::Boundary;
        self.up.auth = None;
        self.down.shut = true; // the caller closes the client's side after its DISCONNECT
        poll_fn(|cx| {
            let up = match self.up.poll(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *upstream),
                &mut self.auth,
                self.version,
                &mut self.to_client,
            ) {
                Poll::Ready(Err(UpError::Io(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(_) => true,
                Poll::Pending => false,
            };
            let down = self.down.poll(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                &mut self.auth,
                &mut self.to_client,
                true,
            )?;
            if up && down.is_ready() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

fn ended(stop: Stop) -> Ended {
    match stop {
        Stop::NotAuthorized => Ended::NotAuthorized,
        Stop::ProtocolError => Ended::ProtocolError,
    }
}

enum UpError {
    Io(io::Error),
    Stop(Stop),
    Auth(Result<Vec<u8>, usize>),
}

impl From<io::Error> for UpError {
    fn from(e: io::Error) -> Self {
        UpError::Io(e)
    }
}

impl Up {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> Poll<Result<(), UpError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos < self.ready {
                let buf = self.buf.as_ref().expect("bytes in flight have a buffer");
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.ready]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                self.counter.inc_by(n as u64);
                self.need_flush = true;
                continue;
            }
            // Everything decided is written: move what is not decided to the front.
            if self.scan > 0 {
                if let Some(buf) = self.buf.as_mut() {
                    buf.copy_within(self.scan..self.end, 0);
                }
                self.end -= self.scan;
            }
            (self.pos, self.ready, self.scan) = (0, 0, 0);
            if let Some(stop) = self.stop {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Ready(Err(UpError::Stop(stop)));
            }
            if let Some(packet) = self.auth.take() {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Ready(Err(UpError::Auth(packet)));
            }
            if self.end > 0 {
                if let Err(stop) = self.process(auth, version, to_client) {
                    self.stop = Some(stop);
                }
                auth.flush_counts();
                let halted = self.stop.is_some() || self.auth.is_some();
                if self.ready > 0 || self.scan > 0 || halted {
                    continue;
                }
            }
            if self.read_done {
                if let Some(buf) = self.buf.take() {
                    pool::give(buf);
                }
                self.end = 0;
                if !self.shut {
                    ready!(w.as_mut().poll_flush(cx))?;
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            if to_client.pending() >= MAX_TO_CLIENT {
                // Woken when the client has taken some (see poll_both).
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            let buf = self.buf.get_or_insert_with(pool::take);
            if self.end == buf.len() {
                // The undecided packet head fills the buffer.
                if buf.len() >= MAX_INSPECTED {
                    return Poll::Ready(Err(UpError::Stop(Stop::ProtocolError)));
                }
                let mut bigger = vec![0u8; (buf.len() * 2).min(MAX_INSPECTED)].into_boxed_slice();
                bigger[..self.end].copy_from_slice(&buf[..self.end]);
                pool::give(std::mem::replace(buf, bigger));
            }
            let mut rb = ReadBuf::new(&mut buf[self.end..]);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.end == 0 {
                        if let Some(buf) = self.buf.take() {
                            pool::give(buf);
                        }
                    }
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                // A packet cut off by EOF is not forwarded.
                self.read_done = true;
                self.scan = self.end;
                continue;
            }
            self.end += n;
        }
    }

    /// Decides what it can of `[scan, end)`.
    fn process(
        &mut self,
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> Result<(), Stop> {
        let buf = self.buf.as_mut().expect("bytes to decide have a buffer");
        while self.scan < self.end {
            let avail = self.end - self.scan;
            match self.cur {
                Cur::Pass(left) => {
                    let n = left.min(avail);
                    if self.ready != self.scan {
                        buf.copy_within(self.scan..self.scan + n, self.ready);
                    }
                    self.ready += n;
                    self.scan += n;
                    self.cur = if n == left {
                        Cur::Boundary
                    } else {
                        Cur::Pass(left - n)
                    };
                }
                Cur::Drop(left) => {
                    let n = left.min(avail);
                    self.scan += n;
                    self.cur = if n == left {
                        Cur::Boundary
                    } else {
                        Cur::Drop(left - n)
                    };
                }
                Cur::Boundary => {
                    let bytes = &buf[self.scan..self.end];
                    let Some(h) = packets::fixed_header(bytes).map_err(|_| Stop::ProtocolError)?
                    else {
                        return Ok(());
                    };
                    let total = h.total();
                    match h.kind() {
                        PUBLISH if auth.checks_topics() => {
                            let body = &bytes[h.header_len..];
                            let head = packets::publish_head(version, h.first, body, h.body_len)
                                .map_err(|_| Stop::ProtocolError)?;
                            let Some(head) = head else {
                                return Ok(());
                            };
                            match auth.publish(&head)? {
                                Publish::Forward => self.cur = Cur::Pass(total),
                                Publish::Drop(answer) => {
                                    if let Some(answer) = answer {
                                        to_client.bytes.extend_from_slice(&answer);
                                    }
                                    self.cur = Cur::Drop(total);
                                }
                            }
                        }
                        SUBSCRIBE if auth.checks_topics() => {
                            if total > MAX_INSPECTED {
                                return Err(Stop::ProtocolError);
                            }
                            if avail < total {
                                return Ok(());
                            }
                            let sub =
                                packets::parse_subscribe(version, &bytes[h.header_len..total])
                                    .map_err(|_| Stop::ProtocolError)?;
                            match auth.subscribe(&sub)? {
                                Subscribed::Forward => self.cur = Cur::Pass(total),
                                Subscribed::Answer(suback) => {
                                    to_client.bytes.extend_from_slice(&suback);
                                    self.cur = Cur::Drop(total);
                                }
                                Subscribed::CutDown(cut) => {
                                    // Never longer than the original, so it fits where
                                    // the original was.
                                    buf[self.ready..self.ready + cut.len()].copy_from_slice(&cut);
                                    self.ready += cut.len();
                                    self.scan += total;
                                    self.last = h.first;
                                }
                            }
                        }
                        // v3.1.1 has no AUTH: type 15 is the broker's to refuse there.
                        AUTH if version == Version::V5 => {
                            if total > MAX_AUTH {
                                self.auth = Some(Err(total));
                                return Ok(());
                            }
                            if avail < total {
                                return Ok(());
                            }
                            self.auth = Some(Ok(bytes[..total].to_vec()));
                            self.scan += total;
                            // Nothing after it is forwarded before the session has decided
                            // it: after a refused token, not a byte more reaches the broker.
                            return Ok(());
                        }
                        _ => self.cur = Cur::Pass(total),
                    }
                    if matches!(self.cur, Cur::Pass(_)) {
                        self.last = h.first;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Down {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        auth: &mut Authorizer,
        to_client: &mut ToClient,
        stop: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            let between = self.pos == self.fed && self.boundary.at_boundary();
            if between && to_client.pending() > 0 {
                let n = ready!(w.as_mut().poll_write(cx, &to_client.bytes[to_client.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                to_client.pos += n;
                self.need_flush = true;
                if to_client.pending() == 0 {
                    to_client.bytes.clear();
                    to_client.pos = 0;
                }
                continue;
            }
            if self.pos < self.fed {
                let buf = self.buf.as_ref().expect("bytes in flight have a buffer");
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.fed]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                self.counter.inc_by(n as u64);
                self.need_flush = true;
                continue;
            }
            // A SUBACK that may need merging is read whole first.
            let mut need_more = false;
            if self.fed < self.end && !(stop && self.boundary.at_boundary()) {
                let buf = self.buf.as_ref().expect("bytes read have a buffer");
                let bytes = &buf[self.fed..self.end];
                if self.boundary.at_boundary() && auth.awaits_suback() && bytes[0] >> 4 == SUBACK {
                    match packets::fixed_header(bytes) {
                        Ok(Some(h)) if h.total() <= bytes.len() => {
                            let body = &bytes[h.header_len..h.total()];
                            if let Some(merged) = auth.suback(body) {
                                // In place of the broker's SUBACK, at this boundary.
                                to_client.bytes.extend_from_slice(&merged);
                                self.bytes += merged.len() as u64;
                                self.counter.inc_by(merged.len() as u64);
                                self.fed += h.total();
                                self.pos = self.fed;
                                continue;
                            }
                        }
                        Ok(Some(h)) if h.total() <= buf.len() => need_more = true,
                        Ok(None) => need_more = true,
                        // Too big to be one of ours, or not framed: passed on below.
                        _ => {}
                    }
                }
                if !need_more {
                    let precise = to_client.pending() > 0 || auth.awaits_suback() || stop;
                    if precise {
                        self.fed += self.boundary.feed_to_boundary(bytes);
                    } else {
                        self.boundary.feed(bytes);
                        self.fed = self.end;
                    }
                    continue;
                }
            }
            if need_more {
                // Keep the SUBACK's start, at the front, and read after it.
                let buf = self.buf.as_mut().expect("bytes read have a buffer");
                buf.copy_within(self.fed..self.end, 0);
                self.end -= self.fed;
                (self.pos, self.fed) = (0, 0);
            } else {
                if self.fed < self.end {
                    // Stopping at a boundary: the rest is not forwarded.
                    self.read_done = true;
                }
                (self.pos, self.fed, self.end) = (0, 0, 0);
                if stop && self.boundary.at_boundary() {
                    self.read_done = true;
                }
                if self.read_done {
                    if let Some(buf) = self.buf.take() {
                        pool::give(buf);
                    }
                    if !self.shut {
                        ready!(w.as_mut().poll_flush(cx))?;
                        ready!(w.as_mut().poll_shutdown(cx))?;
                        self.shut = true;
                    } else if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            let buf = self.buf.get_or_insert_with(pool::take);
            let mut rb = ReadBuf::new(&mut buf[self.end..]);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.end == 0 {
                        if let Some(buf) = self.buf.take() {
                            pool::give(buf);
                        }
                    }
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                // The broker closed (mid-SUBACK perhaps): what there is goes on, then EOF.
                self.read_done = true;
                let buf = self.buf.as_ref().expect("just used");
                self.boundary.feed(&buf[..self.end]);
                self.fed = self.end;
                continue;
            }
            self.end += n;
        }
    }
}

impl Drop for AuthorizedRelay {
    fn drop(&mut self) {
        for buf in [self.up.buf.take(), self.down.buf.take()]
            .into_iter()
            .flatten()
        {
            pool::give(buf);
        }
    }
}

#[cfg(test)]
mod tests;
