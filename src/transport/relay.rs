//! Copies bytes both ways between the client's TLS stream and the broker's TCP stream,
//! unchanged, until either side closes or the connection is told to stop.
//!
//! Why not `tokio::io::copy_bidirectional`: an idle MQTT connection spends almost all its
//! life waiting, and copy_bidirectional holds two 8 KiB buffers the whole time. Here a
//! direction borrows a buffer from a per-thread pool only while it has bytes in flight and
//! hands it back when its read would block, so an idle connection holds none. The
//! broker-to-client direction also tracks MQTT packet boundaries, so mqttgate can end a
//! session with a DISCONNECT that never lands in the middle of a broker packet. The
//! client-to-broker direction tracks them too, so a session the client ended with a
//! DISCONNECT is a clean close even when its TLS stack then drops TCP without
//! close_notify (Python's ssl, many embedded stacks).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::mqtt::PacketBoundary;
use crate::transport::pool;

/// The client's MQTT 5 AUTH packet type (first byte).
const AUTH: u8 = 0xF0;
/// A DISCONNECT with no reason (v3.1.1) or Normal disconnection (v5): the broker discards
/// the Will.
pub const DISCONNECT_PACKET: [u8; 2] = [0xE0, 0x00];

/// One direction of the copy.
#[derive(Debug)]
struct Half {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// The reader reached EOF (or we stopped reading) and every byte was written.
    read_done: bool,
    /// The writer was shut down after `read_done`.
    shut: bool,
    need_flush: bool,
    bytes: u64,
    /// Shared byte counter, advanced as bytes are written so long sessions show up live.
    counter: Option<Counter>,
    /// Reading stops before a packet of this type (the client's AUTH, SPEC §13), which is
    /// never forwarded; `halted` says one was found. `PacketBoundary::NO_HALT`: never.
    halt_at: u8,
    halted: bool,
    /// Written to the writer before it is shut down (a DISCONNECT for the broker when the
    /// session's grant ended, so its Will is discarded).
    farewell: &'static [u8],
}

impl Default for Half {
    fn default() -> Half {
        Half {
            buf: None,
            pos: 0,
            end: 0,
            read_done: false,
            shut: false,
            need_flush: false,
            bytes: 0,
            counter: None,
            halt_at: PacketBoundary::NO_HALT,
            halted: false,
            farewell: &[],
        }
    }
}

impl Half {
    /// Copies until the reader would block (Pending), EOF has been passed on (Ready(Ok)),
    /// or an error. With `boundary`, bytes are fed to the packet tracker; with `stop` also
    /// set, reading ends at the next packet boundary.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        mut boundary: Option<&mut PacketBoundary>,
        stop: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos < self.end {
                let buf = self.buf.as_ref().expect("bytes in flight have a buffer");
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                if let Some(c) = &self.counter {
                    c.inc_by(n as u64);
                }
                self.need_flush = true;
                continue;
            }
            self.pos = 0;
            self.end = 0;
            if stop && boundary.as_ref().is_none_or(|b| b.at_boundary()) {
                self.read_done = true;
            }
            if self.read_done {
                if let Some(buf) = self.buf.take() {
                    pool::give(buf);
                }
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
                return Poll::Ready(Ok(()));
            }
            let buf = self.buf.get_or_insert_with(pool::take);
            let mut rb = ReadBuf::new(buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing in flight: give the buffer back so an idle direction holds none.
                    if let Some(buf) = self.buf.take() {
                        pool::give(buf);
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
                self.read_done = true;
                continue;
            }
            let mut take = n;
            if let Some(b) = boundary.as_deref_mut() {
                if stop {
                    // Forward only up to the end of the packet in progress.
                    take = 0;
                    while take < n {
                        b.feed(&buf[take..take + 1]);
                        take += 1;
                        if b.at_boundary() {
                            break;
                        }
                    }
                } else {
                    take = b.feed_until(&buf[..n], self.halt_at);
                    if take < n {
                        // What came before the halting packet is written, then this
                        // direction ends; poll_both reports why.
                        self.halted = true;
                        self.read_done = true;
                    }
                }
            }
            self.end = take;
        }
    }
}

/// How the copy ended.
#[derive(Debug)]
pub enum Ended {
    /// One side has closed and the other is still open: reported once, then the copy
    /// goes on, so the caller can bound how long the other side may linger.
    HalfClosed,
    /// The client closed its side first, or ended the session with a DISCONNECT whatever
    /// happened after it.
    Client,
    /// The broker closed its side first.
    Upstream,
    Error(io::Error),
    /// The client sent a packet of the type the client direction halts at (an MQTT 5
    /// AUTH): everything before it was forwarded, it and what follows were not.
    Halted,
}

/// Both directions of one proxied connection.
#[derive(Default, Debug)]
pub struct Relay {
    up: Half,
    down: Half,
    /// Client -> broker packets.
    up_boundary: PacketBoundary,
    /// Broker -> client packets.
    boundary: PacketBoundary,
    first_eof: Option<bool>,
    half_close_reported: bool,
}

impl Relay {
    /// A relay whose client direction stops at an MQTT 5 AUTH packet (SPEC §13).
    pub fn new() -> Relay {
        let mut r = Relay::default();
        r.up.halt_at = AUTH >> 4;
        r
    }

    /// A relay that also advances the given byte counters (client to broker, broker to client).
    pub fn with_counters(up: Counter, down: Counter) -> Relay {
        let mut r = Relay::new();
        r.up.counter = Some(up);
        r.down.counter = Some(down);
        r
    }

    /// Accounts for client bytes the caller forwarded itself (the CONNECT it rewrote and
    /// what the client pipelined after it), so packet boundaries stay right.
    pub fn forwarded_up(&mut self, bytes: &[u8]) {
        self.up_boundary.feed(bytes);
        self.up.bytes += bytes.len() as u64;
        if let Some(c) = &self.up.counter {
            c.inc_by(bytes.len() as u64);
        }
    }

    /// The client's last packet was a whole DISCONNECT: the client ended the session.
    fn client_disconnected(&self) -> bool {
        self.up_boundary.ends_after_disconnect()
    }

    /// Accounts for broker bytes the caller forwarded itself before the relay started, so
    /// packet boundaries stay right.
    pub fn forwarded_down(&mut self, bytes: &[u8]) {
        self.boundary.feed(bytes);
        self.down.bytes += bytes.len() as u64;
        if let Some(c) = &self.down.counter {
            c.inc_by(bytes.len() as u64);
        }
    }

    /// Bytes written to the broker and to the client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Copies both ways until both directions have ended. When one side ends first, the
    /// other side's writer is shut down, which for MQTT peers ends the other direction too.
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
        let up = self.up.poll_copy(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *upstream),
            Some(&mut self.up_boundary),
            false,
        );
        if let Poll::Ready(Err(e)) = up {
            return Poll::Ready(self.error_or_client(e));
        }
        if up.is_ready() && self.first_eof.is_none() {
            if self.up.halted {
                return Poll::Ready(Ended::Halted);
            }
            self.first_eof = Some(true);
        }
        let down = self.down.poll_copy(
            cx,
            Pin::new(&mut *upstream),
            Pin::new(&mut *client),
            Some(&mut self.boundary),
            false,
        );
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(self.error_or_client(e));
        }
        if down.is_ready() && self.first_eof.is_none() {
            self.first_eof = Some(false);
        }
        if up.is_ready() && down.is_ready() {
            // A broker closes as soon as it reads a DISCONNECT, often before the client.
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

    /// Which side closed first, once one has: the client (true) or the broker (false).
    pub fn first_to_close(&self) -> Option<bool> {
        self.first_eof
    }

    /// After the client's DISCONNECT the session is over: how its TCP and TLS then end
    /// (no close_notify, a reset) is no error.
    fn error_or_client(&self, e: io::Error) -> Ended {
        if self.client_disconnected() {
            Ended::Client
        } else {
            Ended::Error(e)
        }
    }

    /// Forwards client bytes only to the end of the packet in progress (then, with
    /// `farewell`, a DISCONNECT, so the broker discards the session's Will: SPEC §13),
    /// and broker bytes only to the end of theirs. Then the client can be sent a
    /// DISCONNECT without splitting a packet. Callers bound this with a deadline.
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
        if farewell {
            self.up.farewell = &DISCONNECT_PACKET;
        }
        self.up.halted = false;
        self.down.shut = true; // the client's side is closed by the caller, after its DISCONNECT
        poll_fn(|cx| {
            let up = self.up.poll_copy(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *upstream),
                Some(&mut self.up_boundary),
                true,
            )?;
            let down = self.down.poll_copy(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                Some(&mut self.boundary),
                true,
            )?;
            if up.is_ready() && down.is_ready() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A relay that ends with bytes in flight hands its buffers back to the pool.
impl Drop for Relay {
    fn drop(&mut self) {
        for h in [&mut self.up, &mut self.down] {
            if let Some(buf) = h.buf.take() {
                pool::give(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run` until both directions have ended, passing over the half-close report.
    async fn run_to_end<C, U>(relay: &mut Relay, client: &mut C, upstream: &mut U) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match relay.run(client, upstream).await {
                Ended::HalfClosed => continue,
                ended => return ended,
            }
        }
    }
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_farewell_follows_the_clients_packet_in_progress() {
        let (mut client_app, mut client) = duplex(256);
        let (mut upstream, mut broker) = duplex(256);
        // Half a PUBLISH is in when the session is ended.
        client_app
            .write_all(&[0x30, 0x05, 0x00, 0x01])
            .await
            .unwrap();
        let mut relay = Relay::new();
        // One poll (a zero timeout polls its future once): the half packet is read and
        // passed on, and the relay waits for more.
        let first = tokio::time::timeout(
            std::time::Duration::ZERO,
            relay.run(&mut client, &mut upstream),
        )
        .await;
        assert!(first.is_err(), "still relaying");
        let finish = tokio::spawn(async move {
            relay
                .finish_at_boundary(&mut client, &mut upstream, true)
                .await
                .unwrap();
        });
        client_app.write_all(&[b't', 0xaa, 0xbb]).await.unwrap();
        finish.await.unwrap();
        let mut got = Vec::new();
        broker.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            [0x30, 0x05, 0x00, 0x01, b't', 0xaa, 0xbb, 0xe0, 0x00],
            "the whole PUBLISH, then DISCONNECT"
        );
    }

    #[tokio::test]
    async fn the_client_direction_halts_before_an_auth_packet() {
        let (mut client_app, mut client) = duplex(256);
        let (mut upstream, mut broker) = duplex(256);
        // A PINGREQ, then an AUTH and a PUBLISH in the same write.
        client_app
            .write_all(&[0xc0, 0x00, 0xf0, 0x00, 0x30, 0x03, 0x00, 0x01, b't'])
            .await
            .unwrap();
        let mut relay = Relay::new();
        let ended = relay.run(&mut client, &mut upstream).await;
        assert!(matches!(ended, Ended::Halted), "{ended:?}");
        drop(upstream);
        let mut got = Vec::new();
        broker.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0xc0, 0x00], "only what came before the AUTH");
    }

    #[tokio::test]
    async fn copies_both_ways_and_reports_who_closed() {
        let (mut client_app, mut client) = duplex(64);
        let (mut upstream, mut broker) = duplex(64);
        let task = tokio::spawn(async move {
            let mut relay = Relay::new();
            let ended = run_to_end(&mut relay, &mut client, &mut upstream).await;
            (ended, relay.bytes())
        });
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let send = big.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&send).await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_app.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        broker.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        broker.write_all(b"\x20\x02\x00\x00").await.unwrap();
        broker.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"\x20\x02\x00\x00");
        let (ended, bytes) = task.await.unwrap();
        assert!(matches!(ended, Ended::Client), "{ended:?}");
        assert_eq!(bytes, (100_000, 4));
    }

    /// A client stream that yields `bytes`, then fails like a TLS stream whose peer closed
    /// TCP without close_notify; what is written to it is dropped.
    struct AbruptClient {
        bytes: Vec<u8>,
    }

    impl AsyncRead for AbruptClient {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.bytes.is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            let n = self.bytes.len().min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for AbruptClient {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const PINGREQ: [u8; 2] = [0xc0, 0x00];
    const DISCONNECT: [u8; 2] = [0xe0, 0x00];

    /// How a relay ends when the client sends `bytes` and then drops TCP.
    async fn ends_after(forwarded: &[u8], bytes: &[u8]) -> Ended {
        let mut client = AbruptClient {
            bytes: bytes.to_vec(),
        };
        let (mut upstream, _broker) = duplex(1024);
        let mut relay = Relay::new();
        relay.forwarded_up(forwarded);
        run_to_end(&mut relay, &mut client, &mut upstream).await
    }

    #[tokio::test]
    async fn a_dropped_connection_after_disconnect_is_a_client_close() {
        // A PUBLISH, then DISCONNECT: split so the DISCONNECT's bytes arrive in two reads.
        let publish = [0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'];
        let ended = ends_after(&[], &[&publish[..], &DISCONNECT].concat()).await;
        assert!(matches!(ended, Ended::Client), "{ended:?}");
        // A v5 DISCONNECT with a reason code and properties.
        let ended = ends_after(&[], &[0xe0, 0x02, 0x00, 0x00]).await;
        assert!(matches!(ended, Ended::Client), "{ended:?}");
        // Pipelined after the CONNECT, which the caller forwarded itself.
        let connect = [
            0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01,
            b'c',
        ];
        let ended = ends_after(&[&connect[..], &DISCONNECT].concat(), &[]).await;
        assert!(matches!(ended, Ended::Client), "{ended:?}");
    }

    #[tokio::test]
    async fn a_dropped_connection_without_disconnect_is_an_error() {
        for bytes in [
            &[][..],
            &PINGREQ,
            &[0xe0],
            &[&DISCONNECT[..], &PINGREQ].concat(),
        ] {
            let ended = ends_after(&[], bytes).await;
            assert!(matches!(ended, Ended::Error(_)), "{bytes:02x?}: {ended:?}");
        }
    }

    #[tokio::test]
    async fn a_broker_closing_after_the_clients_disconnect_is_a_client_close() {
        let (mut client_app, mut client) = duplex(64);
        let (mut upstream, mut broker) = duplex(64);
        let task = tokio::spawn(async move {
            let mut relay = Relay::new();
            run_to_end(&mut relay, &mut client, &mut upstream).await
        });
        client_app.write_all(&DISCONNECT).await.unwrap();
        let mut got = [0u8; 2];
        broker.read_exact(&mut got).await.unwrap();
        assert_eq!(got, DISCONNECT);
        // Mosquitto closes as soon as it reads a DISCONNECT, before the client does.
        drop(broker);
        let mut rest = Vec::new();
        client_app.read_to_end(&mut rest).await.unwrap();
        drop(client_app);
        let ended = task.await.unwrap();
        assert!(matches!(ended, Ended::Client), "{ended:?}");
    }

    #[tokio::test]
    async fn finish_at_boundary_never_splits_a_broker_packet() {
        let (mut client_app, mut client) = duplex(1024);
        let (mut upstream, mut broker) = duplex(1024);
        // A whole PINGRESP, then the first 3 bytes of a 6-byte PUBLISH.
        broker
            .write_all(&[0xd0, 0x00, 0x30, 0x04, 0x00])
            .await
            .unwrap();
        let mut relay = Relay::new();
        tokio::time::timeout(
            std::time::Duration::from_millis(50),
            run_to_end(&mut relay, &mut client, &mut upstream),
        )
        .await
        .expect_err("nothing ended yet");
        let finisher = tokio::spawn(async move {
            relay
                .finish_at_boundary(&mut client, &mut upstream, false)
                .await
                .unwrap();
            client.write_all(&[0xe0, 0x00]).await.unwrap();
            client.shutdown().await.unwrap();
        });
        broker
            .write_all(&[0x01, b't', b'x', 0xd0, 0x00])
            .await
            .unwrap();
        finisher.await.unwrap();
        let mut seen = Vec::new();
        client_app.read_to_end(&mut seen).await.unwrap();
        // The PUBLISH completes, the PINGRESP after it is not forwarded, then the DISCONNECT.
        assert_eq!(
            seen,
            [0xd0, 0x00, 0x30, 0x04, 0x00, 0x01, b't', b'x', 0xe0, 0x00]
        );
    }
}
