//! MQTT on the wire for the byte-level client: packet builders, the one packet reader and
//! the one variable-byte-integer encoder every test uses. No TLS, no mqttgate: any
//! `AsyncRead`/`AsyncWrite` will do.

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Reads until the peer closes (or `wait` passes) and returns everything read.
pub async fn read_until_close<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    wait: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// Reads exactly `n` bytes within `wait`.
pub async fn read_exact<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
    wait: Duration,
) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(wait, s.read_exact(&mut buf))
        .await
        .expect("timed out")
        .expect("read failed");
    buf
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

/// Reads one MQTT packet (fixed header and body) within `wait`; None on EOF or timeout.
pub async fn read_packet<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    wait: Duration,
) -> Option<Vec<u8>> {
    tokio::time::timeout(wait, async {
        let mut packet = vec![0u8; 1];
        s.read_exact(&mut packet).await.ok()?;
        let mut len = 0usize;
        for shift in 0..4 {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            packet.push(b[0]);
            len |= ((b[0] & 0x7f) as usize) << (7 * shift);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + len, 0);
        s.read_exact(&mut packet[start..]).await.ok()?;
        Some(packet)
    })
    .await
    .ok()
    .flatten()
}

/// A QoS 1 PUBLISH (v3.1.1 layout when `v5` is false, else with an empty property list).
pub fn publish_qos1(topic: &str, id: u16, payload: &[u8], v5: bool, dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x32 | if dup { 0x08 } else { 0 }];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        p.push(b);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(&body);
    p
}

/// The CONNACK bytes of a refused connection in each protocol version (SPEC §3).
pub const NOT_AUTHORIZED_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

pub const NOT_AUTHORIZED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x87, 0x00];

/// Reads one MQTT packet (fixed header, remaining length, body) within `wait`. An error when
/// the connection fails or closes before the first byte.
pub async fn read_packet_or_error<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    async fn next<S: tokio::io::AsyncRead + Unpin>(
        s: &mut S,
        deadline: tokio::time::Instant,
    ) -> Result<u8, String> {
        let mut byte = [0u8; 1];
        match tokio::time::timeout_at(deadline, s.read(&mut byte)).await {
            Ok(Ok(1)) => Ok(byte[0]),
            Ok(Ok(_)) => Err("closed".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => panic!("no answer in time"),
        }
    }
    out.push(next(s, deadline).await?);
    let mut len = 0usize;
    for shift in 0..4 {
        let b = next(s, deadline)
            .await
            .map_err(|e| format!("mid-packet after {out:02x?}: {e}"))?;
        out.push(b);
        len |= ((b & 0x7f) as usize) << (7 * shift);
        if b & 0x80 == 0 {
            break;
        }
    }
    for _ in 0..len {
        let b = next(s, deadline)
            .await
            .map_err(|e| format!("mid-packet after {out:02x?}: {e}"))?;
        out.push(b);
    }
    Ok(out)
}

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

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
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

/// Reads one whole MQTT packet: its first byte and its body.
pub async fn read_split_packet<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    wait: Duration,
) -> std::io::Result<(u8, Vec<u8>)> {
    tokio::time::timeout(wait, async {
        let first = s.read_u8().await?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Ok((first, body))
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
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
