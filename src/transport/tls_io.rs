//! The server side of a TLS connection on rustls' unbuffered API, with buffers that exist
//! only while bytes are in flight.
//!
//! Why not tokio-rustls: its `ServerConnection` keeps a 4 KiB receive buffer for the life of
//! the connection (rustls shrinks its deframer buffer to one read size, never to zero), plus
//! a fresh allocation per record in each direction. An idle MQTT connection spends almost
//! all its life waiting, so here the received-bytes buffer and the encrypted-bytes buffer
//! are borrowed from a per-thread pool and handed back as soon as they are empty, like the
//! relay's copy buffers. Measured with `scripts/bench.sh` (idle scenario).
//!
//! Semantics follow tokio-rustls: a read returns decrypted application data; EOF after the
//! client's close_notify is a clean end, EOF without it is `UnexpectedEof`; shutdown sends
//! close_notify. Errors from rustls come back as `InvalidData` wrapping the `rustls::Error`,
//! so `HandshakeFailure::classify` reads them the same way.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncodeTlsData, EncryptError,
    InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::server::slots::{progress, Stage};
use crate::transport::pool;

/// The receive buffer is one pooled record buffer (`pool::SIZE`); handshake messages (a
/// client's certificate chain) may be larger, and rustls itself refuses anything over 64 KiB.
const MAX_IN: usize = 64 * 1024 + 5;
/// Plaintext encrypted per write: one full record.
const MAX_PLAIN_PER_WRITE: usize = 16 * 1024;

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What one pass of the rustls state machine asks for next.
enum Step {
    /// Made progress; call again.
    Again,
    /// Encrypted bytes must reach the socket first.
    Flush,
    /// Needs more bytes from the peer.
    Read,
    /// Handshake done and nothing buffered to process: the caller may write or wait.
    Idle,
    /// Encrypted this many plaintext bytes.
    Wrote(usize),
    /// Both sides have sent close_notify.
    Closed,
}

/// A server-side TLS stream, over TCP in production and over in-memory pipes in tests.
pub struct TlsConn<IO = TcpStream> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received bytes not yet processed: a pooled buffer only while it holds bytes.
    inb: Option<Box<[u8]>>,
    in_used: usize,
    /// Decrypted bytes a reader has not taken yet; empty (unallocated) almost always.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet written to the socket: pooled, only while non-empty.
    outb: Option<Box<[u8]>>,
    out_pos: usize,
    out_end: usize,
    peer_closed: bool,
    eof: bool,
    close_sent: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsConn<IO> {
    /// Runs the server handshake over `io` (which verifies the client certificate).
    pub async fn accept(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsConn<IO>> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut t = TlsConn {
            io,
            conn,
            inb: None,
            in_used: 0,
            plain: Vec::new(),
            plain_pos: 0,
            outb: None,
            out_pos: 0,
            out_end: 0,
            peer_closed: false,
            eof: false,
            close_sent: false,
        };
        poll_fn(|cx| t.poll_handshake(cx)).await?;
        // Idle again until the client's first byte after the handshake (server/slots.rs).
        progress(Stage::Handshaken);
        Ok(t)
    }

    /// The client's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    pub fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.is_handshaking() {
                return self.poll_flush_out(cx);
            }
            let step = match self.process(None, None) {
                Ok(s) => s,
                Err(e) => {
                    // Tell the client why (the alert rustls queued), without waiting on it.
                    if let Ok(Step::Again) = self.process(None, None) {
                        let _ = self.poll_flush_out(cx);
                    }
                    return Poll::Ready(Err(e));
                }
            };
            match step {
                Step::Again | Step::Idle | Step::Wrote(_) => {}
                Step::Flush => {
                    // Our first flight answers a complete ClientHello: the peer is
                    // progressing, not idle (server/slots.rs).
                    progress(Stage::Hello);
                    ready!(self.poll_flush_out(cx))?
                }
                Step::Read => {
                    if ready!(self.poll_read_more(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        )));
                    }
                }
                Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }

    /// One pass of the state machine over the buffered received bytes. Decrypted data goes
    /// to `dst` as far as it fits, the rest to `plain`; `src` is encrypted when writing is
    /// possible.
    fn process(
        &mut self,
        mut dst: Option<&mut ReadBuf<'_>>,
        src: Option<&[u8]>,
    ) -> io::Result<Step> {
        let TlsConn {
            conn,
            inb,
            in_used,
            plain,
            outb,
            out_pos,
            out_end,
            peer_closed,
            ..
        } = self;
        let incoming: &mut [u8] = match inb {
            Some(b) => &mut b[..*in_used],
            None => &mut [],
        };
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
        let step = match state.map_err(invalid)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    discard += deliver(record.map_err(invalid)?, dst.as_deref_mut(), plain);
                }
                Step::Again
            }
            ConnectionState::EncodeTlsData(mut enc) => {
                // rustls has already dequeued this record: it goes into the buffer now or
                // is lost, so make room instead of flushing first.
                let mut out = Out {
                    buf: outb,
                    pos: out_pos,
                    end: out_end,
                };
                out.encode(&mut enc)?;
                Step::Again
            }
            ConnectionState::TransmitTlsData(t) => {
                if *out_end > *out_pos {
                    Step::Flush
                } else {
                    t.done();
                    Step::Again
                }
            }
            ConnectionState::BlockedHandshake => Step::Read,
            ConnectionState::WriteTraffic(mut w) => match src {
                Some(data) if !data.is_empty() => {
                    let mut out = Out {
                        buf: outb,
                        pos: out_pos,
                        end: out_end,
                    };
                    out.encrypt(&mut w, data)?
                }
                _ => Step::Idle,
            },
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                Step::Again
            }
            ConnectionState::Closed => {
                *peer_closed = true;
                Step::Closed
            }
            ConnectionState::ReadEarlyData(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected early data",
                ))
            }
            _ => return Err(io::Error::other("unknown TLS connection state")),
        };
        consume(inb, in_used, discard);
        Ok(step)
    }

    /// Reads more bytes from the socket into the receive buffer. When the socket has
    /// nothing and no partial record is held, the buffer goes back to the pool.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let b = self.inb.get_or_insert_with(pool::take);
        if self.in_used == b.len() {
            if b.len() >= MAX_IN {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                )));
            }
            let mut bigger = vec![0u8; MAX_IN].into_boxed_slice();
            bigger[..self.in_used].copy_from_slice(&b[..self.in_used]);
            *b = bigger;
        }
        let mut rb = ReadBuf::new(&mut b[self.in_used..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.in_used += n;
                if n == 0 {
                    self.eof = true;
                }
                if self.in_used == 0 {
                    if let Some(b) = self.inb.take() {
                        pool::give(b);
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.in_used == 0 {
                    if let Some(b) = self.inb.take() {
                        pool::give(b);
                    }
                }
                Poll::Pending
            }
        }
    }

    /// Writes buffered encrypted bytes to the socket; the buffer goes back to the pool
    /// once empty.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_end {
            let b = self.outb.as_ref().expect("bytes to write have a buffer");
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &b[self.out_pos..self.out_end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out_pos = 0;
        self.out_end = 0;
        if let Some(b) = self.outb.take() {
            pool::give(b);
        }
        Poll::Ready(Ok(()))
    }
}

/// Makes `required` bytes free after the unsent bytes `pos..end` of the output buffer:
/// moves them to the front when that is enough, else into a bigger buffer (which goes back
/// to the allocator, not the pool, once sent).
/// Hands an application-data record's plaintext to the reader's buffer, keeping what does
/// not fit for the next read; returns the bytes rustls may discard.
fn deliver(record: AppDataRecord<'_>, dst: Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>) -> usize {
    let mut rest: &[u8] = record.payload;
    if let Some(buf) = dst {
        let k = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..k]);
        rest = &rest[k..];
    }
    plain.extend_from_slice(rest);
    record.discard
}

/// The encrypted-bytes buffer, borrowed from the connection while rustls writes into it.
struct Out<'a> {
    buf: &'a mut Option<Box<[u8]>>,
    pos: &'a mut usize,
    end: &'a mut usize,
}

/// Drops the first `discard` bytes of the receive buffer (records rustls has processed);
/// an empty buffer goes back to the pool.
fn consume(inb: &mut Option<Box<[u8]>>, in_used: &mut usize, discard: usize) {
    if discard > 0 {
        if let Some(b) = inb.as_mut() {
            b.copy_within(discard..*in_used, 0);
        }
        *in_used -= discard;
    }
    if *in_used == 0 {
        if let Some(b) = inb.take() {
            pool::give(b);
        }
    }
}

impl Out<'_> {
    /// A record rustls has dequeued: into the buffer, with room made for it if needed.
    fn encode(&mut self, enc: &mut EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
        self.put(
            false,
            |b| enc.encode(b),
            |e| match e {
                EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                    Some(*required_size)
                }
                _ => None,
            },
        )?;
        Ok(())
    }

    /// Application data encrypted into the buffer: `Wrote` when it was, `Flush` when the
    /// buffered bytes must go out first.
    fn encrypt(
        &mut self,
        w: &mut WriteTraffic<'_, ServerConnectionData>,
        data: &[u8],
    ) -> io::Result<Step> {
        // Nothing is consumed when there is no room: with bytes buffered, send those first
        // and try again; with none (a queued KeyUpdate ahead of the data makes more than a
        // record's worth), make room for this write.
        let flush_first = *self.end > *self.pos;
        let wrote = self.put(
            flush_first,
            |b| w.encrypt(data, b),
            |e| match e {
                EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                    Some(*required_size)
                }
                _ => None,
            },
        )?;
        Ok(if wrote {
            Step::Wrote(data.len())
        } else {
            Step::Flush
        })
    }

    /// Lets `write` fill the free end of the buffer. When it needs more room (`needs` says
    /// how much): with `flush_first`, returns false having written nothing (only valid when
    /// `write` consumed nothing, as encryption does); otherwise makes that room and writes
    /// again, so an already-dequeued record is never dropped.
    fn put<E: std::fmt::Display>(
        &mut self,
        flush_first: bool,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<bool> {
        let ob = self.buf.get_or_insert_with(pool::take);
        let n = match write(&mut ob[*self.end..]) {
            Ok(n) => n,
            Err(e) => {
                let required = needs(&e).ok_or_else(|| io::Error::other(e.to_string()))?;
                if flush_first {
                    return Ok(false);
                }
                make_room(self.buf, self.pos, self.end, required);
                let ob = self.buf.as_mut().expect("make_room leaves a buffer");
                write(&mut ob[*self.end..]).map_err(|e| io::Error::other(e.to_string()))?
            }
        };
        *self.end += n;
        Ok(true)
    }
}

fn make_room(outb: &mut Option<Box<[u8]>>, pos: &mut usize, end: &mut usize, required: usize) {
    let ob = outb.get_or_insert_with(pool::take);
    let pending = *end - *pos;
    if ob.len() - *end >= required {
        return;
    }
    if ob.len() >= pending + required {
        ob.copy_within(*pos..*end, 0);
    } else {
        let mut big = vec![0u8; pending + required].into_boxed_slice();
        big[..pending].copy_from_slice(&ob[*pos..*end]);
        if let Some(old) = outb.replace(big) {
            pool::give(old);
        }
    }
    *pos = 0;
    *end = pending;
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let k = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + k]);
                this.plain_pos += k;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match this.process(Some(buf), None)? {
                Step::Again | Step::Wrote(_) => {
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Flush => ready!(this.poll_flush_out(cx))?,
                Step::Closed => return Poll::Ready(Ok(())),
                Step::Read | Step::Idle => {
                    if this.peer_closed {
                        return Poll::Ready(Ok(()));
                    }
                    if this.eof {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    ready!(this.poll_read_more(cx))?;
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = &data[..data.len().min(MAX_PLAIN_PER_WRITE)];
        loop {
            match this.process(None, Some(chunk))? {
                Step::Wrote(n) => {
                    // Start sending now; what the socket doesn't take waits for the next
                    // write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Step::Again => {}
                Step::Flush => ready!(this.poll_flush_out(cx))?,
                Step::Read | Step::Idle | Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS connection cannot send application data",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            // Settle what is pending (tickets, buffered records) before the alert.
            for _ in 0..16 {
                match this.process(None, None)? {
                    Step::Again => {}
                    Step::Flush => ready!(this.poll_flush_out(cx))?,
                    _ => break,
                }
            }
            let incoming: &mut [u8] = &mut [];
            if let Ok(ConnectionState::WriteTraffic(mut w)) =
                this.conn.process_tls_records(incoming).state
            {
                let ob = this.outb.get_or_insert_with(pool::take);
                let n = match w.queue_close_notify(&mut ob[this.out_end..]) {
                    Ok(n) => n,
                    // The alert now waits behind records rustls still holds: send them all.
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => {
                        make_room(
                            &mut this.outb,
                            &mut this.out_pos,
                            &mut this.out_end,
                            required_size,
                        );
                        let ob = this.outb.as_mut().expect("make_room leaves a buffer");
                        w.queue_close_notify(&mut ob[this.out_end..]).unwrap_or(0)
                    }
                    Err(_) => 0,
                };
                this.out_end += n;
            }
            ready!(this.poll_flush_out(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO> Drop for TlsConn<IO> {
    fn drop(&mut self) {
        if let Some(b) = self.inb.take() {
            pool::give(b);
        }
        if let Some(b) = self.outb.take() {
            pool::give(b);
        }
    }
}

#[cfg(all(test, feature = "demo"))]
mod tests;
