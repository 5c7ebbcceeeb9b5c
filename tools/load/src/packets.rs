//! The MQTT packets the generator sends and the reader for what comes back.

use std::sync::atomic::{AtomicU64, Ordering};

use mqttgate::mqtt::{Connect, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::*;

// ---- MQTT packets the generator needs ----

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// `--jwt`: the Authentication Method and Data properties, read once.
fn jwt_properties(cli: &Cli) -> &'static [u8] {
    static PROPS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PROPS.get_or_init(|| {
        let Some(file) = &cli.jwt else {
            return Vec::new();
        };
        let token = std::fs::read_to_string(file).expect("--jwt file is readable");
        let mut p = vec![0x15];
        p.extend_from_slice(&10u16.to_be_bytes());
        p.extend_from_slice(b"CUSTOM-JWT");
        p.push(0x16);
        p.extend_from_slice(&(token.trim().len() as u16).to_be_bytes());
        p.extend_from_slice(token.trim().as_bytes());
        p
    })
}

pub(crate) fn connect_packet(cli: &Cli, client_id: String) -> Vec<u8> {
    Connect {
        version: if cli.mqtt == 5 || cli.jwt.is_some() {
            Version::V5
        } else {
            Version::V311
        },
        clean_start: true,
        keep_alive: 600,
        properties: jwt_properties(cli).to_vec(),
        client_id,
        will: None,
        username: cli.username.clone(),
        password: None,
    }
    .encode()
    .expect("load-test CONNECT fields are short")
}

pub(crate) fn publish_packet(
    out: &mut Vec<u8>,
    v5: bool,
    topic: &str,
    qos: u8,
    id: u16,
    payload: &[u8],
) {
    let props = usize::from(v5);
    let ident = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + ident + props + payload.len();
    out.push(0x30 | (qos << 1));
    put_varint(out, remaining);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

pub(crate) fn subscribe_packet(v5: bool, topic: &str, qos: u8) -> Vec<u8> {
    let mut out = vec![0x82];
    let remaining = 2 + usize::from(v5) + 2 + topic.len() + 1;
    put_varint(&mut out, remaining);
    out.extend_from_slice(&1u16.to_be_bytes());
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.push(qos);
    out
}

/// Reads whole MQTT packets from a stream; the buffer is reused.
pub(crate) struct Reader {
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// (first byte, header length, total length) of the packet at the front of `b`, if whole.
pub(crate) fn frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 1..5 {
        let byte = *b.get(i)?;
        len += (byte & 0x7f) as usize * mult;
        mult *= 128;
        if byte & 0x80 == 0 {
            let total = i + 1 + len;
            return (b.len() >= total).then_some((b[0], i + 1, total));
        }
    }
    None
}

impl Reader {
    pub(crate) fn new() -> Reader {
        Reader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The next whole packet as (first byte, header length, bytes); reads as needed.
    pub(crate) async fn next<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        s: &mut S,
    ) -> std::io::Result<(u8, usize, &[u8])> {
        loop {
            if let Some((first, hl, total)) = frame(&self.buf[self.start..self.end]) {
                let p = self.start;
                self.start += total;
                return Ok((first, hl, &self.buf[p..p + total]));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
            let n = s.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }
}

/// Connects and waits for a successful CONNACK.
pub(crate) async fn mqtt_connect(
    cli: &Cli,
    dialer: &Dialer,
    client_id: String,
    reader: &mut Reader,
) -> Result<Dyn, String> {
    let mut s = dialer.dial().await.map_err(|e| format!("dial: {e}"))?;
    s.write_all(&connect_packet(cli, client_id))
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let (first, hl, p) = reader
        .next(&mut s)
        .await
        .map_err(|e| format!("read CONNACK: {e}"))?;
    if first != 0x20 || p.len() < hl + 2 || p[hl + 1] != 0 {
        return Err(format!("refused: {:02x?}", &p[..p.len().min(8)]));
    }
    Ok(s)
}

pub(crate) static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn client_id(kind: &str) -> String {
    format!(
        "lg{}-{kind}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}
