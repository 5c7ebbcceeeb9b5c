//! Broker -> client for the authorized relay: bytes copied as the plain relay does, with
//! mqttgate's own packets put in between broker packets (see the parent module).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ToClient;
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
