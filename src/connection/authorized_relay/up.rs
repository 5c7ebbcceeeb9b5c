//! Client -> broker for the authorized relay: packets read at their boundaries, decided,
//! then forwarded from the buffer they were read into (see the parent module).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{park, poll_flush_once, ToClient, AUTH, MAX_AUTH, MAX_INSPECTED, MAX_TO_CLIENT};
use crate::connection::authorize::{Authorizer, Publish, Stop, Subscribed};
use crate::mqtt::client_packets::{self as packets, PUBLISH, SUBSCRIBE};
use crate::mqtt::Version;
use crate::transport::pool;

/// Where the client -> broker direction is in the packet stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cur {
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
pub(super) struct Up {
    pub(super) buf: Option<Box<[u8]>>,
    pub(super) pos: usize,
    pub(super) ready: usize,
    pub(super) scan: usize,
    pub(super) end: usize,
    pub(super) cur: Cur,
    /// The first byte of the last packet forwarded whole.
    pub(super) last: u8,
    pub(super) read_done: bool,
    pub(super) shut: bool,
    pub(super) need_flush: bool,
    pub(super) bytes: u64,
    pub(super) counter: Counter,
    /// Authorization ends the session once what was decided before is written.
    pub(super) stop: Option<Stop>,
    /// An AUTH packet (or its length, past `MAX_AUTH`), handed up once what was decided
    /// before it is written.
    pub(super) auth: Option<Result<Vec<u8>, usize>>,
    /// Written to the broker before its side is shut down: a DISCONNECT when the session's
    /// grant ended (SPEC §13: its Will is discarded).
    pub(super) farewell: &'static [u8],
}

pub(super) enum UpError {
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
    /// Starts with what the client pipelined after its CONNECT, decided like everything
    /// after it.
    pub(super) fn new(counter: Counter, pipelined: &[u8]) -> Up {
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
            counter,
            stop: None,
            auth: None,
            farewell: &[],
        };
        if !pipelined.is_empty() {
            let mut buf = pool::take();
            if buf.len() < pipelined.len() {
                buf = vec![0; pipelined.len()].into_boxed_slice();
            }
            buf[..pipelined.len()].copy_from_slice(pipelined);
            up.end = pipelined.len();
            up.buf = Some(buf);
        }
        up
    }

    pub(super) fn poll<R, W>(
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
            if ready!(self.poll_write_decided(cx, w.as_mut()))? {
                continue;
            }
            self.compact();
            if self.stop.is_some() || self.auth.is_some() {
                // Flushed before the AUTH is taken: a flush still pending keeps it here.
                ready!(poll_flush_once(cx, w.as_mut(), &mut self.need_flush))?;
                return Poll::Ready(Err(match (self.stop, self.auth.take()) {
                    (Some(stop), _) => UpError::Stop(stop),
                    (None, packet) => UpError::Auth(packet.expect("checked above")),
                }));
            }
            if self.end > 0 && self.decide(auth, version, to_client) {
                continue;
            }
            if self.read_done {
                return self.poll_finish(cx, w.as_mut()).map_err(UpError::Io);
            }
            if to_client.pending() >= MAX_TO_CLIENT {
                // Woken when the client has taken some (see poll_both).
                ready!(poll_flush_once(cx, w.as_mut(), &mut self.need_flush))?;
                return Poll::Pending;
            }
            ready!(self.poll_read_more(cx, r.as_mut(), w.as_mut()))?;
        }
    }

    /// Writes what is decided; true when some of it was written.
    fn poll_write_decided<W>(
        &mut self,
        cx: &mut Context<'_>,
        w: Pin<&mut W>,
    ) -> Poll<io::Result<bool>>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.pos == self.ready {
            return Poll::Ready(Ok(false));
        }
        let buf = self.buf.as_ref().expect("bytes in flight have a buffer");
        let n = ready!(w.poll_write(cx, &buf[self.pos..self.ready]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.pos += n;
        self.bytes += n as u64;
        self.counter.inc_by(n as u64);
        self.need_flush = true;
        Poll::Ready(Ok(true))
    }

    /// Everything decided is written: moves what is not decided yet to the front.
    fn compact(&mut self) {
        if self.scan > 0 {
            if let Some(buf) = self.buf.as_mut() {
                buf.copy_within(self.scan..self.end, 0);
            }
            self.end -= self.scan;
        }
        (self.pos, self.ready, self.scan) = (0, 0, 0);
    }

    /// Decides what it can of the bytes read; true when that made progress (bytes decided
    /// or dropped, or the session halted), false when more bytes are needed.
    fn decide(
        &mut self,
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> bool {
        if let Err(stop) = self.process(auth, version, to_client) {
            self.stop = Some(stop);
        }
        auth.flush_counts();
        let halted = self.stop.is_some() || self.auth.is_some();
        self.ready > 0 || self.scan > 0 || halted
    }

    /// The client's side ended and everything decided is written: the buffer goes back,
    /// and the broker's side is shut down once.
    fn poll_finish<W>(&mut self, cx: &mut Context<'_>, mut w: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        self.end = 0;
        while !self.shut && !self.farewell.is_empty() {
            let n = ready!(w.as_mut().poll_write(cx, self.farewell))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.farewell = &self.farewell[n..];
        }
        if !self.shut {
            ready!(w.as_mut().poll_flush(cx))?;
            ready!(w.as_mut().poll_shutdown(cx))?;
            self.shut = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more of the client's bytes after the undecided ones, growing the buffer when
    /// a packet head fills it (up to `MAX_INSPECTED`). With nothing to read, an empty
    /// buffer goes back to the pool and what was written is flushed.
    fn poll_read_more<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: Pin<&mut R>,
        w: Pin<&mut W>,
    ) -> Poll<Result<(), UpError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
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
        match r.poll_read(cx, &mut rb) {
            Poll::Pending => {
                return park(cx, w, &mut self.buf, self.end == 0, &mut self.need_flush)
                    .map_err(UpError::Io);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(())) => {}
        }
        let n = rb.filled().len();
        if n == 0 {
            // A packet cut off by EOF is not forwarded.
            self.read_done = true;
            self.scan = self.end;
        }
        self.end += n;
        Poll::Ready(Ok(()))
    }

    /// Decides what it can of `[scan, end)`.
    pub(super) fn process(
        &mut self,
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> Result<(), Stop> {
        // Out of `self` while deciding, so the steps below can take both.
        let mut buf = self.buf.take().expect("bytes to decide have a buffer");
        let result = self.process_in(&mut buf, auth, version, to_client);
        self.buf = Some(buf);
        result
    }

    fn process_in(
        &mut self,
        buf: &mut [u8],
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> Result<(), Stop> {
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
                    if !self.at_boundary(buf, auth, version, to_client)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The packet starting at `scan`: decided, or false when more of it is needed first
    /// (or it is an AUTH, which halts the direction until the session has decided it).
    fn at_boundary(
        &mut self,
        buf: &mut [u8],
        auth: &mut Authorizer,
        version: Version,
        to_client: &mut ToClient,
    ) -> Result<bool, Stop> {
        let bytes = &buf[self.scan..self.end];
        let Some(h) = packets::fixed_header(bytes).map_err(|_| Stop::ProtocolError)? else {
            return Ok(false);
        };
        let total = h.total();
        match h.kind() {
            PUBLISH if auth.checks_topics() => {
                let body = &bytes[h.header_len..];
                let head = packets::publish_head(version, h.first, body, h.body_len)
                    .map_err(|_| Stop::ProtocolError)?;
                let Some(head) = head else {
                    return Ok(false);
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
                if bytes.len() < total {
                    return Ok(false);
                }
                let sub = packets::parse_subscribe(version, &bytes[h.header_len..total])
                    .map_err(|_| Stop::ProtocolError)?;
                match auth.subscribe(&sub)? {
                    Subscribed::Forward => self.cur = Cur::Pass(total),
                    Subscribed::Answer(suback) => {
                        to_client.bytes.extend_from_slice(&suback);
                        self.cur = Cur::Drop(total);
                    }
                    Subscribed::CutDown(cut) => {
                        // Never longer than the original, so it fits where the original was.
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
                    return Ok(false);
                }
                if bytes.len() < total {
                    return Ok(false);
                }
                self.auth = Some(Ok(bytes[..total].to_vec()));
                self.scan += total;
                // Nothing after it is forwarded before the session has decided it: after
                // a refused token, not a byte more reaches the broker.
                return Ok(false);
            }
            _ => self.cur = Cur::Pass(total),
        }
        if matches!(self.cur, Cur::Pass(_)) {
            self.last = h.first;
        }
        Ok(true)
    }
}
