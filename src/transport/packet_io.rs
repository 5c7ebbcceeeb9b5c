//! Reads one MQTT packet from a peer into a caller-owned buffer, under a deadline and a
//! size bound. Deciding when the bytes are complete is the caller's pure codec function;
//! this holds only the read loop, so the client's CONNECT and the broker's CONNACK are
//! read the same way.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use crate::server::slots::{progress, Stage};

/// The smallest read: a buffer with less spare room than this doubles first.
const MIN_READ: usize = 64;

/// Why no packet was read. `buf` keeps every byte that arrived, so the caller can still
/// look at a partial packet (a CONNECT's protocol level after a timeout).
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    #[error("peer closed before a complete packet")]
    Closed,
    #[error("no complete packet before the deadline")]
    Timeout,
    #[error("no complete packet within {max} bytes")]
    TooLarge { max: usize },
    #[error("read failed: {0}")]
    Io(io::Error),
    /// The codec refused the bytes.
    #[error(transparent)]
    Invalid(E),
}

/// Reads from `stream` into `buf` until `complete(buf)` gives `Some`, and returns that.
///
/// `complete` is called on everything read so far (and first on what `buf` already holds):
/// `Ok(None)` asks for more bytes. `buf` never grows past `max` bytes; a codec still asking
/// for more at `max` is [`ReadError::TooLarge`]. Bytes read past the packet stay in `buf`
/// (a client may pipeline packets after its CONNECT).
pub async fn read_packet<R, T, E>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    deadline: Instant,
    max: usize,
    mut complete: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, ReadError<E>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some(done) = complete(buf).map_err(ReadError::Invalid)? {
            return Ok(done);
        }
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Err(ReadError::TooLarge { max });
        }
        let start = buf.len();
        // Reads fill the capacity the caller chose for its usual packet and double it only
        // when a packet turns out larger, so a small packet costs one small allocation.
        if buf.capacity() - start < MIN_READ {
            buf.reserve(start.max(MIN_READ));
        }
        buf.resize(start + (buf.capacity() - start).min(room), 0);
        let read = match timeout_at(deadline, stream.read(&mut buf[start..])).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Err(_) => Err(ReadError::Timeout),
        };
        // Only bytes that arrived stay in the buffer, whatever ended the read.
        buf.truncate(start + read.as_ref().map_or(0, |&n| n));
        if read? == 0 {
            return Err(ReadError::Closed);
        }
        // A pending connection's CONNECT has begun: it is progressing (server/slots.rs).
        progress(Stage::Connecting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncWriteExt};

    use crate::mqtt;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// Complete once the framed packet at the start is whole; its length.
    fn framed(buf: &[u8]) -> Result<Option<usize>, &'static str> {
        Ok(mqtt::packet_len(buf)?.filter(|&len| buf.len() >= len))
    }

    #[tokio::test]
    async fn a_packet_split_across_writes_is_read_whole_with_what_follows() {
        let (mut peer, mut ours) = duplex(64);
        let writer = tokio::spawn(async move {
            for part in [&[0x20][..], &[0x02, 0x00], &[0x05, 0xd0, 0x00]] {
                peer.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            peer
        });
        let mut buf = Vec::new();
        let len = read_packet(&mut ours, &mut buf, soon(), 64, framed)
            .await
            .unwrap();
        assert_eq!(len, 4);
        assert!(buf.starts_with(&[0x20, 0x02, 0x00, 0x05]));
        assert!(buf.len() <= 6);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn bytes_already_in_the_buffer_are_looked_at_first() {
        let (_peer, mut ours) = duplex(64);
        let mut buf = vec![0xd0, 0x00];
        let len = read_packet(&mut ours, &mut buf, soon(), 64, framed)
            .await
            .unwrap();
        assert_eq!(len, 2);
    }

    #[tokio::test]
    async fn a_close_before_the_packet_is_whole_is_closed() {
        let (mut peer, mut ours) = duplex(64);
        peer.write_all(&[0x20, 0x02, 0x00]).await.unwrap();
        drop(peer);
        let mut buf = Vec::new();
        let got = read_packet(&mut ours, &mut buf, soon(), 64, framed).await;
        assert!(matches!(got, Err(ReadError::Closed)), "{got:?}");
        assert_eq!(buf, [0x20, 0x02, 0x00]);
    }

    #[tokio::test]
    async fn a_stall_ends_at_the_deadline_keeping_what_arrived() {
        let (mut peer, mut ours) = duplex(64);
        peer.write_all(&[0x10, 0x0c]).await.unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(50);
        let got = read_packet(&mut ours, &mut buf, deadline, 64, framed).await;
        assert!(matches!(got, Err(ReadError::Timeout)), "{got:?}");
        assert_eq!(buf, [0x10, 0x0c]);
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn the_buffer_never_grows_past_the_bound() {
        let (mut peer, mut ours) = duplex(16 * 1024);
        // A 10,000-byte PUBLISH, longer than the bound.
        let mut publish = vec![0x30, 0x8e, 0x4e];
        publish.resize(10_003, 0xaa);
        peer.write_all(&publish).await.unwrap();
        let mut buf = Vec::new();
        let got = read_packet(&mut ours, &mut buf, soon(), 100, framed).await;
        assert!(
            matches!(got, Err(ReadError::TooLarge { max: 100 })),
            "{got:?}"
        );
        assert_eq!(buf.len(), 100);
    }

    #[tokio::test]
    async fn a_codec_error_is_passed_on() {
        let (mut peer, mut ours) = duplex(64);
        peer.write_all(&[0x20, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let mut buf = Vec::new();
        let got = read_packet(&mut ours, &mut buf, soon(), 64, framed).await;
        assert!(
            matches!(
                got,
                Err(ReadError::Invalid(
                    "variable byte integer is longer than four bytes"
                ))
            ),
            "{got:?}"
        );
    }
}
