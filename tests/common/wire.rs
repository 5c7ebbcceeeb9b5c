//! MQTT on the wire for the byte-level client: packet builders, the one packet reader and
//! the one variable-byte-integer encoder every test uses. No TLS, no mqttgate server: any
//! `AsyncRead`/`AsyncWrite` will do.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

/// Appends an MQTT variable byte integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// A whole packet: the fixed header byte, the remaining length, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// Appends a two-byte length and the bytes (a UTF-8 string or binary data).
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A 3.1.1 SUBSCRIBE of one topic filter.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    packet(0x82, &body)
}

/// A 3.1.1 PUBLISH; `packet_id` is written only for QoS > 0.
pub fn publish_packet(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + topic.len() + 4);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// A minimal CONNECT for the byte-level client.
pub fn connect_packet(version: u8, client_id: &str, username: Option<&str>) -> Vec<u8> {
    let c = mqttgate::mqtt::Connect {
        version: match version {
            3 => mqttgate::mqtt::Version::V31,
            4 => mqttgate::mqtt::Version::V311,
            _ => mqttgate::mqtt::Version::V5,
        },
        clean_start: true,
        keep_alive: 30,
        properties: vec![],
        client_id: client_id.to_string(),
        will: None,
        username: username.map(str::to_string),
        password: None,
    };
    c.encode().unwrap()
}

/// A QoS 1 PUBLISH (v3.1.1 layout when `v5` is false, else with an empty property list).
pub fn publish_qos1(topic: &str, id: u16, payload: &[u8], v5: bool, dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x32 | if dup { 0x08 } else { 0 }, &body)
}

/// The CONNACK bytes of a refused connection in each protocol version (SPEC §3).
pub const NOT_AUTHORIZED_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
pub const NOT_AUTHORIZED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x87, 0x00];

/// Why `try_read_packet` returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPacket {
    /// The connection closed ("closed") or failed before the first byte of a packet.
    Closed(String),
    /// The connection closed or failed, or the remaining length was malformed, after these
    /// bytes of a packet.
    MidPacket(Vec<u8>, String),
    /// `wait` passed.
    TimedOut,
}

/// Reads one whole MQTT packet (fixed header, remaining length, body) within `wait`. The
/// fixed header is read a byte at a time, so nothing after this packet is consumed.
pub async fn try_read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    wait: Duration,
) -> Result<Vec<u8>, NoPacket> {
    let deadline = Instant::now() + wait;
    let mut packet = Vec::new();
    let total = loop {
        match mqttgate::mqtt::packet_len(&packet) {
            Ok(Some(total)) => break total,
            Ok(None) => {}
            Err(e) => return Err(NoPacket::MidPacket(packet, e.to_string())),
        }
        let mut byte = [0u8; 1];
        let error = match timeout_at(deadline, s.read(&mut byte)).await {
            Err(_) => return Err(NoPacket::TimedOut),
            Ok(Ok(1)) => {
                packet.push(byte[0]);
                continue;
            }
            Ok(Ok(_)) => "closed".to_string(),
            Ok(Err(e)) => e.to_string(),
        };
        return Err(if packet.is_empty() {
            NoPacket::Closed(error)
        } else {
            NoPacket::MidPacket(packet, error)
        });
    };
    let header = packet.len();
    packet.resize(total, 0);
    match timeout_at(deadline, s.read_exact(&mut packet[header..])).await {
        Err(_) => Err(NoPacket::TimedOut),
        Ok(Ok(_)) => Ok(packet),
        Ok(Err(e)) => {
            packet.truncate(header);
            Err(NoPacket::MidPacket(packet, e.to_string()))
        }
    }
}

/// Reads one MQTT packet within `wait`; None on close, failure or timeout.
pub async fn read_packet<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Option<Vec<u8>> {
    try_read_packet(s, wait).await.ok()
}

/// A whole packet's first byte and its body (what follows the remaining length).
pub fn split_packet(packet: &[u8]) -> (u8, &[u8]) {
    let length_bytes = packet[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .expect("a whole packet")
        + 1;
    (packet[0], &packet[1 + length_bytes..])
}

/// A 3.1.1 PUBLISH's topic, packet id (QoS > 0) and payload.
pub fn parse_publish(first: u8, body: &[u8]) -> (String, Option<u16>, Vec<u8>) {
    assert_eq!(first >> 4, 3, "not a PUBLISH: {first:02x}");
    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
    let mut at = 2 + tlen;
    let id = if (first >> 1) & 0x03 > 0 {
        at += 2;
        Some(u16::from_be_bytes([body[at - 2], body[at - 1]]))
    } else {
        None
    };
    (topic, id, body[at..].to_vec())
}

/// Reads exactly `n` bytes within `wait`.
pub async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, n: usize, wait: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(wait, s.read_exact(&mut buf))
        .await
        .expect("timed out")
        .expect("read failed");
    buf
}

/// Reads until the peer closes (or `wait` passes) and returns everything read.
pub async fn read_until_close<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        match timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}
