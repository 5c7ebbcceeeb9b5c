//! Broker -> client for the authorized relay: bytes copied as the plain relay does, with
//! mqttgate's own packets put in between broker packets (see the parent module).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{park, poll_flush_once, ToClient};
use crate::connection::authorize::Authorizer;
use crate::mqtt::client_packets::{self as packets, SUBACK};
use crate::mqtt::PacketBoundary;
use crate::transport::pool;

/// Broker -> client. `[pos, fed)` has been fed to `boundary` and is to be written;
/// `[fed, end)` is read but not yet looked at.
#[derive(Debug)]
pub(super) struct Down {
    pub(super) buf: Option<Box<[u8]>>,
    pub(super) pos: usize,
    pub(super) fed: usize,
    pub(super) end: usize,
    pub(super) boundary: PacketBoundary,
    pub(super) read_done: bool,
    pub(super) shut: bool,
    pub(super) need_flush: bool,
    pub(super) bytes: u64,
    pub(super) counter: Counter,
}

/// What [`Down::look`] did with the bytes read.
enum Looked {
    /// Fed some to the boundary tracker (or merged a SUBACK): there is more to write.
    Fed,
    /// A SUBACK that may need merging is not all in yet.
    NeedMore,
    /// Nothing to look at (or stopping at a boundary).
    Nothing,
}

impl Down {
    /// Starts from the broker stream's boundary after the CONNACK was passed on.
    pub(super) fn new(counter: Counter, boundary: PacketBoundary) -> Down {
        Down {
            buf: None,
            pos: 0,
            fed: 0,
            end: 0,
            boundary,
            read_done: false,
            shut: false,
            need_flush: false,
            bytes: 0,
            counter,
        }
    }

    pub(super) fn poll<R, W>(
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
            if ready!(self.poll_write(cx, w.as_mut(), to_client))? {
                continue;
            }
            match self.look(auth, to_client, stop) {
                Looked::Fed => continue,
                Looked::NeedMore => self.keep_partial_suback(),
                Looked::Nothing => {
                    if ready!(self.poll_buffer_done(cx, w.as_mut(), stop))? {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            ready!(self.poll_read_more(cx, r.as_mut(), w.as_mut()))?;
        }
    }

    /// Writes mqttgate's own packets when the broker stream is between packets, else the
    /// broker's bytes already looked at; true when something was written.
    fn poll_write<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
        to_client: &mut ToClient,
    ) -> Poll<io::Result<bool>>
    where
        W: AsyncWrite + ?Sized,
    {
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
            return Poll::Ready(Ok(true));
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
            return Poll::Ready(Ok(true));
        }
        Poll::Ready(Ok(false))
    }

    /// Looks at the bytes read and not yet fed to the boundary tracker: a SUBACK that may
    /// need merging is read whole first, and merged in place of the broker's.
    fn look(&mut self, auth: &mut Authorizer, to_client: &mut ToClient, stop: bool) -> Looked {
        if self.fed == self.end || (stop && self.boundary.at_boundary()) {
            return Looked::Nothing;
        }
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
                        return Looked::Fed;
                    }
                }
                Ok(Some(h)) if h.total() <= buf.len() => return Looked::NeedMore,
                Ok(None) => return Looked::NeedMore,
                // Too big to be one of ours, or not framed: passed on below.
                _ => {}
            }
        }
        let precise = to_client.pending() > 0 || auth.awaits_suback() || stop;
        if precise {
            self.fed += self.boundary.feed_to_boundary(bytes);
        } else {
            self.boundary.feed(bytes);
            self.fed = self.end;
        }
        Looked::Fed
    }

    /// Keeps the start of a SUBACK at the front, to read the rest after it.
    fn keep_partial_suback(&mut self) {
        let buf = self.buf.as_mut().expect("bytes read have a buffer");
        buf.copy_within(self.fed..self.end, 0);
        self.end -= self.fed;
        (self.pos, self.fed) = (0, 0);
    }

    /// Everything read is written: the buffer starts over, unless this direction is done
    /// (the broker closed, or the session stops at a boundary), when the client's side is
    /// shut down once and true is returned.
    fn poll_buffer_done<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
        stop: bool,
    ) -> Poll<io::Result<bool>>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.fed < self.end {
            // Stopping at a boundary: the rest is not forwarded.
            self.read_done = true;
        }
        (self.pos, self.fed, self.end) = (0, 0, 0);
        if stop && self.boundary.at_boundary() {
            self.read_done = true;
        }
        if !self.read_done {
            return Poll::Ready(Ok(false));
        }
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        if !self.shut {
            ready!(w.as_mut().poll_flush(cx))?;
            ready!(w.as_mut().poll_shutdown(cx))?;
            self.shut = true;
        } else {
            ready!(poll_flush_once(cx, w.as_mut(), &mut self.need_flush))?;
        }
        Poll::Ready(Ok(true))
    }

    /// Reads more of the broker's bytes. With nothing to read, an empty buffer goes back
    /// to the pool and what was written is flushed.
    fn poll_read_more<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: Pin<&mut R>,
        w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let buf = self.buf.get_or_insert_with(pool::take);
        let mut rb = ReadBuf::new(&mut buf[self.end..]);
        match r.poll_read(cx, &mut rb) {
            Poll::Pending => {
                return park(cx, w, &mut self.buf, self.end == 0, &mut self.need_flush);
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
        }
        self.end += n;
        Poll::Ready(Ok(()))
    }
}
