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
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};

use super::authorize::{Authorizer, Stop};
use crate::mqtt::{PacketBoundary, Version};
use crate::transport::pool;
use crate::transport::relay;

mod down;
mod up;

use self::down::Down;
use self::up::{Cur, Up, UpError};

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

/// How a session's relay stopped, either relay's: the transport's ends, and what
/// inspecting the client's packets ends a session with.
#[derive(Debug)]
pub enum Ended {
    /// One side has closed and the other is still open (reported once).
    HalfClosed,
    /// The client closed first, or ended the session with a DISCONNECT.
    Client,
    /// The broker closed first.
    Upstream,
    Error(io::Error),
    /// Authorization ended the session (SPEC §11): a v3.1.1 client's PUBLISH was denied.
    NotAuthorized,
    /// The client broke the protocol: in a way that could hide a topic from the decision,
    /// or with an AUTH packet no method of its session takes (SPEC §13: never forwarded).
    ProtocolError,
    /// The client sent an MQTT 5 AUTH packet (SPEC §9): the whole packet, never forwarded,
    /// or `Err(its length)` when it is longer than the relay holds. The relay goes on from
    /// the packet after it once run again.
    Reauthenticate(Result<Vec<u8>, usize>),
}

impl From<relay::Ended> for Ended {
    fn from(e: relay::Ended) -> Ended {
        match e {
            relay::Ended::HalfClosed => Ended::HalfClosed,
            relay::Ended::Client => Ended::Client,
            relay::Ended::Upstream => Ended::Upstream,
            relay::Ended::Error(e) => Ended::Error(e),
            // The plain relay halts at an AUTH, which its sessions' methods do not take.
            relay::Ended::Halted => Ended::ProtocolError,
        }
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
        let up = Up::new(up_counter, &pipelined);
        AuthorizedRelay {
            auth,
            version,
            up,
            down: Down::new(down_counter, down),
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
        farewell: bool,
    ) -> io::Result<()>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        // What is decided ends at a packet boundary unless a packet is passing through:
        // only then can a DISCONNECT follow it (SPEC §13: the Will discarded).
        if farewell && matches!(self.up.cur, Cur::Boundary) {
            self.up.farewell = &crate::transport::relay::DISCONNECT_PACKET;
        }
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

/// Flushes what was written since the last flush, once.
fn poll_flush_once<W>(
    cx: &mut Context<'_>,
    w: Pin<&mut W>,
    need_flush: &mut bool,
) -> Poll<io::Result<()>>
where
    W: AsyncWrite + ?Sized,
{
    if *need_flush {
        std::task::ready!(w.poll_flush(cx))?;
        *need_flush = false;
    }
    Poll::Ready(Ok(()))
}

/// A direction with nothing to read: an empty buffer goes back to the pool (an idle
/// direction holds none) and what was written is flushed before it waits. Pending, or
/// the flush's error.
fn park<W>(
    cx: &mut Context<'_>,
    w: Pin<&mut W>,
    buf: &mut Option<Box<[u8]>>,
    empty: bool,
    need_flush: &mut bool,
) -> Poll<io::Result<()>>
where
    W: AsyncWrite + ?Sized,
{
    if empty {
        if let Some(buf) = buf.take() {
            pool::give(buf);
        }
    }
    std::task::ready!(poll_flush_once(cx, w, need_flush))?;
    Poll::Pending
}

fn ended(stop: Stop) -> Ended {
    match stop {
        Stop::NotAuthorized => Ended::NotAuthorized,
        Stop::ProtocolError => Ended::ProtocolError,
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
