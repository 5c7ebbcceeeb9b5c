//! MQTT over WebSockets from the client side (`--ws PATH`): the HTTP/1.1 upgrade, then
//! each write sent as one masked binary frame and the server's binary frames read back as
//! a byte stream. Made for load: simple buffers, no message assembly.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::dial::Dyn;

pub(crate) struct WsClient {
    inner: Dyn,
    /// Raw bytes read from the server, not yet consumed.
    raw: Vec<u8>,
    /// Payload bytes of the current server frame still to deliver, and whether it is data.
    left: usize,
    data: bool,
    /// A frame being written, and how much of it has gone.
    out: Vec<u8>,
    out_at: usize,
    mask_seed: u32,
}

/// Sends the upgrade request and reads the 101 answer.
pub(crate) async fn upgrade(mut inner: Dyn, path: &str, host: &str) -> io::Result<WsClient> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: bWdhdGUtbG9hZC1rZXkhIQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    inner.write_all(request.as_bytes()).await?;
    let mut raw = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if raw.len() > 8192 {
            return Err(io::Error::other("upgrade answer too long"));
        }
        let n = inner.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    if !raw.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&raw[..end])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return Err(io::Error::other(format!("upgrade refused: {head}")));
    }
    raw.drain(..end);
    Ok(WsClient {
        inner,
        raw,
        left: 0,
        data: false,
        out: Vec::new(),
        out_at: 0,
        mask_seed: 0x9e37_79b9,
    })
}

impl WsClient {
    /// Parses the next server frame header from `raw`, if complete.
    fn next_header(&mut self) -> io::Result<bool> {
        let r = &self.raw;
        if r.len() < 2 {
            return Ok(false);
        }
        let (len, h) = match r[1] & 0x7f {
            126 if r.len() >= 4 => (usize::from(u16::from_be_bytes([r[2], r[3]])), 4),
            127 if r.len() >= 10 => (
                u64::from_be_bytes(r[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return Ok(false),
            n => (usize::from(n), 2),
        };
        let opcode = r[0] & 0x0f;
        if opcode == 0x8 {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        self.data = opcode == 0x2 || opcode == 0x0;
        self.left = len;
        self.raw.drain(..h);
        Ok(true)
    }

    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.left > 0 && !this.raw.is_empty() {
                let n = this.left.min(this.raw.len());
                if this.data {
                    let n = n.min(buf.remaining());
                    buf.put_slice(&this.raw[..n]);
                    this.raw.drain(..n);
                    this.left -= n;
                    return Poll::Ready(Ok(()));
                }
                this.raw.drain(..n);
                this.left -= n;
                continue;
            }
            if this.left == 0 && this.next_header()? {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.raw.extend_from_slice(rb.filled());
        }
    }
}

impl AsyncWrite for WsClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        let n = data.len().min(16 * 1024);
        this.mask_seed = this
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = this.mask_seed.to_be_bytes();
        this.out.push(0x82);
        match n {
            0..=125 => this.out.push(0x80 | n as u8),
            126..=0xffff => {
                this.out.push(0x80 | 126);
                this.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                this.out.push(0x80 | 127);
                this.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        this.out.extend_from_slice(&mask);
        this.out
            .extend(data[..n].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // The frame is ours now; start sending it, the rest goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
