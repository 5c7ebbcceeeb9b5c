//! [`WsConn`]: MQTT's byte stream over a WebSocket, as `AsyncRead + AsyncWrite`, so every
//! phase after the upgrade and the relay are the TLS listener's code unchanged.
//!
//! Reads decode the client's frames in the reader's own buffer ([`Decoder::decode`]);
//! writes wrap each write in one binary frame. Between reads and writes a session holds
//! its decoder (a partial header, one control payload) and at most one queued control
//! frame: no buffer, so an idle WebSocket session costs what an idle TLS one does plus
//! a few hundred bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{timeout, timeout_at, Instant};

use super::frame::{self, ControlFrame, Decoder, FrameError, MAX_HEADER, OP_BINARY};
use super::upgrade::{self, UpgradeRefusal};
use crate::server::slots::{progress, Stage};
use crate::transport::pool;

/// Payload per data frame: with its header it stays within one TLS record, so a frame is
/// one record and one write.
const MAX_FRAME_PAYLOAD: usize = 16 * 1024 - 4;

/// What the upgrade needs from the listener's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRules {
    pub path: String,
    pub max_request_bytes: usize,
    /// `websocket.allowed_origins`, lowercase (see upgrade.rs).
    pub allowed_origins: Vec<String>,
}

/// Reads and answers the opening handshake before `deadline`. A refusal has been
/// answered with its HTTP status (when the client is still there) by the time it returns.
pub async fn accept<IO>(
    mut io: IO,
    rules: &UpgradeRules,
    deadline: Instant,
) -> Result<WsConn<IO>, UpgradeRefusal>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let result = match timeout_at(deadline, read_request(&mut io, rules)).await {
        Ok(r) => r,
        Err(_) => Err(UpgradeRefusal::Timeout),
    };
    let answer = match &result {
        Ok(accepted) => accepted.response().into_bytes(),
        Err(refusal) => match refusal.response() {
            Some(r) => r.as_bytes().to_vec(),
            None => return Err(*refusal),
        },
    };
    // A refusal never waits long on a client that does not read.
    let sent = timeout(std::time::Duration::from_secs(1), async {
        io.write_all(&answer).await?;
        io.flush().await
    })
    .await;
    match (result, sent) {
        (Ok(_), Ok(Ok(()))) => {
            // Idle again until the first CONNECT byte.
            progress(Stage::Upgraded);
            Ok(WsConn::new(io))
        }
        (Ok(_), _) => Err(UpgradeRefusal::ClientGone),
        (Err(refusal), _) => {
            let _ = timeout(std::time::Duration::from_secs(1), io.shutdown()).await;
            Err(refusal)
        }
    }
}

/// Reads until the request is complete, refused, or past its size limit.
async fn read_request<IO>(
    io: &mut IO,
    rules: &UpgradeRules,
) -> Result<upgrade::Accepted, UpgradeRefusal>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(1024.min(rules.max_request_bytes));
    let mut chunk = [0u8; 1024];
    loop {
        let room = rules.max_request_bytes - buf.len();
        let want = chunk.len().min(room + 1);
        let n = io
            .read(&mut chunk[..want])
            .await
            .map_err(|_| UpgradeRefusal::ClientGone)?;
        if n == 0 {
            return Err(UpgradeRefusal::ClientGone);
        }
        if n > room {
            return Err(UpgradeRefusal::TooLarge);
        }
        // The request has begun: progressing, not idle (server/slots.rs).
        progress(Stage::Upgrading);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(accepted) = upgrade::parse(&buf, &rules.path, &rules.allowed_origins)? {
            // RFC 6455 §4.1: a client waits for the answer before sending frames.
            if accepted.len != buf.len() {
                return Err(UpgradeRefusal::BadRequest);
            }
            return Ok(accepted);
        }
    }
}

/// A WebSocket connection after the upgrade.
pub struct WsConn<IO> {
    io: IO,
    decoder: Decoder,
    /// Payload bytes still owed to the data frame whose header is written.
    frame_left: usize,
    /// Raw bytes that must reach `io` before anything else: a control frame, or the rest
    /// of a data frame's header the transport took only part of.
    pending: [u8; 2 + frame::MAX_CONTROL],
    pending_at: u8,
    pending_len: u8,
    /// Our close frame is queued or sent: nothing is written after it.
    close_sent: bool,
    /// The close code we send: a protocol error's, or 1000 at shutdown.
    our_close: Option<u16>,
    read_done: bool,
}

impl<IO> WsConn<IO> {
    fn new(io: IO) -> WsConn<IO> {
        WsConn {
            io,
            decoder: Decoder::default(),
            frame_left: 0,
            pending: [0; 2 + frame::MAX_CONTROL],
            pending_at: 0,
            pending_len: 0,
            close_sent: false,
            our_close: None,
            read_done: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.pending[..bytes.len()].copy_from_slice(bytes);
        self.pending_at = 0;
        self.pending_len = bytes.len() as u8;
    }

    /// Between two data frames, queues the control frame that is due: our close (echoing
    /// the client's, or a protocol error's), else a pong.
    fn queue_control(&mut self) -> bool {
        if self.frame_left > 0 || self.pending_len > 0 || self.close_sent {
            return false;
        }
        let close = match (self.our_close, self.decoder.close) {
            (Some(code), _) => Some(code),
            (None, Some(code)) => Some(code.unwrap_or(frame::CLOSE_NORMAL)),
            (None, None) => None,
        };
        let frame = match (close, self.decoder.pong_due.take()) {
            (Some(code), _) => {
                self.close_sent = true;
                ControlFrame::close(code)
            }
            (None, Some(ping)) => ControlFrame::pong(&ping),
            (None, None) => return false,
        };
        self.queue(frame.bytes());
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsConn<IO> {
    /// Writes the pending raw bytes.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending_len {
            let bytes = &self.pending[usize::from(self.pending_at)..usize::from(self.pending_len)];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n as u8;
        }
        self.pending_at = 0;
        self.pending_len = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends every control frame that is due and can go now.
    fn poll_controls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_pending(cx))?;
            if !self.queue_control() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Starts a data frame for the first bytes of `data`, header and payload in one write;
    /// returns the payload bytes the transport took.
    fn poll_new_frame(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let n = data.len().min(MAX_FRAME_PAYLOAD);
        let mut scratch = pool::take();
        let h = frame::write_header(OP_BINARY, n, &mut scratch[..MAX_HEADER]);
        scratch[h..h + n].copy_from_slice(&data[..n]);
        let written = Pin::new(&mut self.io).poll_write(cx, &scratch[..h + n]);
        let result = match written {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(k)) if k >= h => {
                self.frame_left = n - (k - h);
                Poll::Ready(Ok(k - h))
            }
            Poll::Ready(Ok(k)) => {
                // Only part of the header went: the rest goes first, then the payload.
                let rest = scratch[k..h].to_vec();
                self.queue(&rest);
                self.frame_left = n;
                Poll::Ready(Ok(0))
            }
        };
        pool::give(scratch);
        result
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            // A pong or our close answer goes out as soon as it can; if the transport is
            // busy, the next write or flush sends it.
            if let Poll::Ready(Err(e)) = this.poll_controls(cx) {
                return Poll::Ready(Err(e));
            }
            let dst = buf.initialize_unfilled();
            let mut raw = ReadBuf::new(dst);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                // TCP or TLS ended without a close frame: an end all the same.
                this.read_done = true;
                return Poll::Ready(Ok(()));
            }
            let data = match this.decoder.decode(&mut dst[..n]) {
                Ok(d) => d,
                Err(e) => {
                    this.our_close = Some(e.code());
                    this.read_done = true;
                    let _ = this.poll_controls(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            };
            if this.decoder.close.is_some() {
                this.read_done = true;
                let _ = this.poll_controls(cx);
            }
            if data > 0 {
                buf.advance(data);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(this.poll_pending(cx))?;
            if this.frame_left > 0 {
                let n = this.frame_left.min(data.len());
                let k = ready!(Pin::new(&mut this.io).poll_write(cx, &data[..n]))?;
                if k == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                this.frame_left -= k;
                return Poll::Ready(Ok(k));
            }
            if this.queue_control() {
                continue;
            }
            if this.close_sent {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            match ready!(this.poll_new_frame(cx, data))? {
                0 => continue,
                k => return Poll::Ready(Ok(k)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_controls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Ends with a close frame (RFC 6455 §7.1.2), unless a data frame is unfinished, then
    /// shuts the transport down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.frame_left == 0 && this.our_close.is_none() && this.decoder.close.is_none() {
            this.our_close = Some(frame::CLOSE_NORMAL);
        }
        ready!(this.poll_controls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The frame error behind an I/O error from [`WsConn`], if that is what it was.
pub fn frame_error(e: &io::Error) -> Option<FrameError> {
    e.get_ref()?.downcast_ref::<FrameError>().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ws::frame::{OP_CLOSE, OP_PING, OP_TEXT};
    use tokio::io::{duplex, DuplexStream};

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER];
        let h = frame::write_header(opcode, payload.len(), &mut out);
        let mut f = out[..h].to_vec();
        f[1] |= 0x80;
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        f
    }

    fn rules() -> UpgradeRules {
        UpgradeRules {
            path: "/mqtt".into(),
            max_request_bytes: 1024,
            allowed_origins: Vec::new(),
        }
    }

    const REQUEST: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    async fn upgraded() -> (WsConn<DuplexStream>, DuplexStream) {
        let (server, mut client) = duplex(1 << 16);
        client.write_all(REQUEST.as_bytes()).await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let ws = accept(server, &rules(), deadline).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"));
        (ws, client)
    }

    #[tokio::test]
    async fn bytes_cross_frames_both_ways_and_pings_are_answered() {
        let (mut ws, mut client) = upgraded().await;
        let mut wire = client_frame(OP_BINARY, b"hel");
        wire.extend(client_frame(OP_PING, b"p1"));
        wire.extend(client_frame(OP_BINARY, b"lo"));
        client.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let mut buf = [0u8; 64];
            let n = ws.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello");
        ws.write_all(b"world").await.unwrap();
        ws.flush().await.unwrap();
        let mut answer = [0u8; 11];
        client.read_exact(&mut answer).await.unwrap();
        // The pong went out first (with the read), then the data in one binary frame.
        assert_eq!(&answer[..4], [0x8a, 2, b'p', b'1']);
        assert_eq!(&answer[4..], [0x82, 5, b'w', b'o', b'r', b'l', b'd']);
        ws.shutdown().await.unwrap();
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 2, 0x03, 0xe8]);
    }

    #[tokio::test]
    async fn a_client_close_is_echoed_and_reads_end() {
        let (mut ws, mut client) = upgraded().await;
        client
            .write_all(&client_frame(OP_CLOSE, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ws.read(&mut buf).await.unwrap(), 0);
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 2, 0x03, 0xe9]);
        assert!(
            ws.write_all(b"late").await.is_err(),
            "nothing after a close"
        );
    }

    #[tokio::test]
    async fn a_text_frame_is_refused_with_close_1003() {
        let (mut ws, mut client) = upgraded().await;
        client
            .write_all(&client_frame(OP_TEXT, b"{}"))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let err = ws.read(&mut buf).await.unwrap_err();
        assert_eq!(frame_error(&err), Some(FrameError::TextFrame));
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 2, 0x03, 0xeb]);
    }

    #[tokio::test]
    async fn refusals_are_answered_and_a_silent_client_gets_408() {
        let (server, mut client) = duplex(4096);
        client
            .write_all(REQUEST.replace("/mqtt", "/nope").as_bytes())
            .await
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let refused = accept(server, &rules(), deadline).await.err();
        assert_eq!(refused, Some(UpgradeRefusal::NotFound));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

        let (server, mut client) = duplex(4096);
        client.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let refused = accept(server, &rules(), deadline).await.err();
        assert_eq!(refused, Some(UpgradeRefusal::Timeout));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

        let (server, mut client) = duplex(4096);
        client.write_all(&[b'a'; 2000]).await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let refused = accept(server, &rules(), deadline).await.err();
        assert_eq!(refused, Some(UpgradeRefusal::TooLarge));
    }

    #[tokio::test]
    async fn large_writes_are_split_into_record_sized_frames() {
        let (mut ws, mut client) = upgraded().await;
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let writer = tokio::spawn(async move {
            ws.write_all(&data).await.unwrap();
            ws.flush().await.unwrap();
            (ws, data)
        });
        let mut got = Vec::new();
        while got.len() < 40_000 {
            let mut h = [0u8; 4];
            client.read_exact(&mut h).await.unwrap();
            assert_eq!(h[0], 0x82);
            assert_eq!(h[1], 126, "a 16-bit length: at most one record");
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            assert!(len <= MAX_FRAME_PAYLOAD);
            let mut p = vec![0u8; len];
            client.read_exact(&mut p).await.unwrap();
            got.extend(p);
        }
        let (_, data) = writer.await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn the_upgrade_request_is_progress_and_idle_again_once_answered() {
        use crate::server::slots::{progress, Slots, Stage};
        let (slots, pending) = Slots::one_pending();
        let (server, mut client) = duplex(1 << 16);
        let served = tokio::spawn(async move {
            let upgraded = pending
                .watch(async {
                    // As after the TLS handshake.
                    progress(Stage::Handshaken);
                    let deadline = Instant::now() + std::time::Duration::from_secs(10);
                    accept(server, &rules(), deadline).await.map(|_| ())
                })
                .await;
            // The slot stays taken (as while the CONNECT is awaited) for the last look.
            (upgraded, pending)
        });
        slots.reaches(Stage::Handshaken).await;
        client.write_all(&REQUEST.as_bytes()[..10]).await.unwrap();
        slots.reaches(Stage::Upgrading).await;
        client.write_all(&REQUEST.as_bytes()[10..]).await.unwrap();
        let (upgraded, _pending) = served.await.unwrap();
        assert_eq!(upgraded, Ok(Ok(())));
        assert_eq!(slots.stages(), [Stage::Upgraded]);
    }
}
