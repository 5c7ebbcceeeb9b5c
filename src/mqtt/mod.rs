//! Parses the first MQTT CONNECT and builds the few packets mqttgate itself sends. Pure: no I/O; callers own buffering and deadlines.
//!
//! Covers MQTT 3.1 (`MQIsdp` level 3), 3.1.1 and 5.0. v5 properties are kept as opaque
//! bytes: mqttgate never interprets them, it only forwards them.
//!
//! The parser accepts exactly the minimally encoded CONNECTs, so for every packet it
//! accepts, `encode` gives back the same bytes; a rewrite changes only the fields it sets.

pub mod auth;
pub mod client_packets;
pub mod properties;

use thiserror::Error;

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const DISCONNECT: u8 = 0xE0;
/// The largest value a four-byte variable byte integer holds.
const VARINT_MAX: usize = 268_435_455;
const PROPERTY_REASON_STRING: u8 = 0x1F;

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN_START: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// CONNACK and DISCONNECT reason codes mqttgate sends.
pub mod code {
    pub const V3_ACCEPTED: u8 = 0x00;
    pub const V3_UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    pub const V3_IDENTIFIER_REJECTED: u8 = 0x02;
    pub const V3_SERVER_UNAVAILABLE: u8 = 0x03;
    pub const V3_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub const V3_NOT_AUTHORIZED: u8 = 0x05;

    pub const V5_SUCCESS: u8 = 0x00;
    pub const V5_UNSPECIFIED_ERROR: u8 = 0x80;
    pub const V5_MALFORMED: u8 = 0x81;
    pub const V5_PROTOCOL_ERROR: u8 = 0x82;
    pub const V5_UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const V5_BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const V5_NOT_AUTHORIZED: u8 = 0x87;
    pub const V5_SERVER_UNAVAILABLE: u8 = 0x88;
    pub const V5_SERVER_BUSY: u8 = 0x89;
    pub const V5_SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const V5_BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const V5_PACKET_TOO_LARGE: u8 = 0x95;
    pub const V5_QUOTA_EXCEEDED: u8 = 0x97;
    pub const V5_ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const V5_CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `MQIsdp`, level 3.
    V31,
    /// `MQTT`, level 4.
    V311,
    /// `MQTT`, level 5.
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Version::V31 => "3.1",
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }

    fn protocol_name(self) -> &'static [u8] {
        match self {
            Version::V31 => b"MQIsdp",
            Version::V311 | Version::V5 => b"MQTT",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// v5 will properties without their length prefix, opaque; empty for v3 (and not encoded there).
    pub properties: Vec<u8>,
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// v5 CONNECT properties without their length prefix, opaque; empty for v3 (and not encoded there).
    pub properties: Vec<u8>,
    pub client_id: String,
    pub will: Option<Will>,
    /// `None`: the flag is absent; `Some("")`: present but empty.
    pub username: Option<String>,
    /// Binary; never required to be UTF-8.
    pub password: Option<Vec<u8>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("first packet is not a connect (packet type {packet_type})")]
    NotConnect { packet_type: u8 },
    #[error("connect of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        len: usize,
        max: usize,
        version: Option<Version>,
    },
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocol { level: u8 },
    #[error("malformed connect: {reason}")]
    Malformed {
        version: Option<Version>,
        reason: &'static str,
    },
}

/// Why a CONNECT cannot be encoded. Nothing [`parse_connect`] accepts fails; a rewrite can
/// (a per-identity client id or a long authentication name grows a field).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{field} is longer than 65535 bytes")]
    FieldTooLong { field: &'static str },
    #[error("connect of {len} bytes is over the mqtt maximum")]
    TooLarge { len: usize },
}

impl ParseError {
    /// The client's version, when the packet got far enough to tell.
    pub fn version(&self) -> Option<Version> {
        match self {
            ParseError::TooLarge { version, .. } | ParseError::Malformed { version, .. } => {
                *version
            }
            ParseError::NotConnect { .. } | ParseError::UnsupportedProtocol { .. } => None,
        }
    }

    /// How the client is refused for this error; pass `self.version()` to [`Refusal::connack`].
    pub fn refusal(&self) -> Refusal {
        match self {
            ParseError::NotConnect { .. } | ParseError::Malformed { .. } => Refusal::Malformed,
            ParseError::TooLarge { .. } => Refusal::PacketTooLarge,
            ParseError::UnsupportedProtocol { .. } => Refusal::UnsupportedProtocol,
        }
    }
}

/// Parses the CONNECT at the start of `buf`, a packet of at most `max_len` bytes.
///
/// `Ok(None)`: need more bytes. `Ok(Some((connect, consumed)))`: `consumed` = bytes of the
/// CONNECT; `buf[consumed..]` are pipelined bytes that belong to later packets.
///
/// Never asks for more than `max_len` bytes: an oversized packet is refused as soon as its
/// fixed header and protocol level (at most 14 bytes) are in, so a v5 client can be told.
pub fn parse_connect(buf: &[u8], max_len: usize) -> Result<Option<(Connect, usize)>, ParseError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != CONNECT >> 4 {
        return Err(ParseError::NotConnect {
            packet_type: first >> 4,
        });
    }
    if first != CONNECT {
        return Err(malformed(None, "connect fixed header flags are not zero"));
    }
    let Some((remaining, varint_len)) =
        read_varint(&buf[1..]).map_err(|reason| malformed(None, reason))?
    else {
        return Ok(None);
    };
    let header_len = 1 + varint_len;
    let total = header_len + remaining;
    if total > max_len {
        return too_large(buf, header_len, total, max_len);
    }
    let Some(body) = buf.get(header_len..total) else {
        return Ok(None);
    };
    Ok(Some((parse_body(body)?, total)))
}

/// The length of the whole packet at the start of `buf` (fixed header and body), once its
/// fixed header is in. For reading the broker's CONNACK, which the broker frames.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    match buf.split_first() {
        None => Ok(None),
        Some((_, rest)) => Ok(read_varint(rest)?.map(|(len, n)| 1 + n + len)),
    }
}

/// The reason code (v5) or return code (v3) of the complete CONNACK at the start of
/// `buf`, or `None` when `buf` does not start with a whole, well-framed CONNACK. The
/// remaining length is a variable byte integer: a v5 CONNACK with many properties puts
/// the code after a two-byte (or longer) length.
pub fn connack_code(buf: &[u8]) -> Option<u8> {
    let (&first, rest) = buf.split_first()?;
    if first != CONNACK {
        return None;
    }
    let (remaining, varint_len) = read_varint(rest).ok()??;
    // Acknowledge flags, then the code.
    let body = rest.get(varint_len..varint_len + remaining)?;
    body.get(1).copied()
}

/// The client's version from the start of a CONNECT that never completed, once its
/// protocol level has arrived: a v5 client whose CONNECT times out is told 0x81.
pub fn peek_version(buf: &[u8]) -> Option<Version> {
    if buf.first() != Some(&CONNECT) {
        return None;
    }
    let (_, varint_len) = read_varint(&buf[1..]).ok()??;
    protocol(&buf[1 + varint_len..]).ok()?.map(|(v, _)| v)
}

/// Refuses an oversized packet, waiting (within `max_len`) for its protocol level.
fn too_large(
    buf: &[u8],
    header_len: usize,
    total: usize,
    max: usize,
) -> Result<Option<(Connect, usize)>, ParseError> {
    let available = &buf[header_len..buf.len().min(total)];
    let version = match protocol(available) {
        Ok(Some((version, _))) => Some(version),
        Ok(None) if buf.len() < total && buf.len() < max => return Ok(None),
        Ok(None) | Err(_) => None,
    };
    Err(ParseError::TooLarge {
        len: total,
        max,
        version,
    })
}

/// Reads the protocol name and level at the start of the variable header.
/// `Ok(None)` when `body` ends before the level; else the version and the bytes read.
fn protocol(body: &[u8]) -> Result<Option<(Version, usize)>, ParseError> {
    let Some(&[hi, lo]) = body.get(..2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len != 4 && name_len != 6 {
        return Err(malformed(None, "unknown protocol name"));
    }
    let Some(&level) = body.get(2 + name_len) else {
        return Ok(None);
    };
    let version = match (&body[2..2 + name_len], level) {
        (b"MQIsdp", 3) => Version::V31,
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        (b"MQIsdp" | b"MQTT", level) => return Err(ParseError::UnsupportedProtocol { level }),
        _ => return Err(malformed(None, "unknown protocol name")),
    };
    Ok(Some((version, 3 + name_len)))
}

/// Parses the variable header and payload of a CONNECT, all of `body`.
fn parse_body(body: &[u8]) -> Result<Connect, ParseError> {
    let Some((version, used)) = protocol(body)? else {
        return Err(malformed(None, "packet ends inside the protocol name"));
    };
    let v5 = version == Version::V5;
    let mut r = Reader {
        rest: &body[used..],
        version,
    };
    let flags = r.u8()?;
    if flags & FLAG_RESERVED != 0 {
        return Err(r.malformed("reserved connect flag is set"));
    }
    let has_will = flags & FLAG_WILL != 0;
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    if will_qos == 3 {
        return Err(r.malformed("will qos is 3"));
    }
    if !has_will && (will_qos != 0 || will_retain) {
        return Err(r.malformed("will qos or retain is set without the will flag"));
    }
    // 3.1.1 [MQTT-3.1.2-22]; 3.1 is held to the same rule. 5.0 allows it.
    if has_password && !has_username && !v5 {
        return Err(r.malformed("password flag is set without the username flag"));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 { r.properties()? } else { Vec::new() };
    let client_id = r.string()?;
    let will = if has_will {
        Some(Will {
            properties: if v5 { r.properties()? } else { Vec::new() },
            topic: r.string()?,
            payload: r.binary()?.to_vec(),
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?.to_vec())
    } else {
        None
    };
    if !r.rest.is_empty() {
        return Err(r.malformed("bytes left after the last field"));
    }
    Ok(Connect {
        version,
        clean_start: flags & FLAG_CLEAN_START != 0,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn malformed(version: Option<Version>, reason: &'static str) -> ParseError {
    ParseError::Malformed { version, reason }
}

/// Reads the fields of a complete packet body; running out of bytes is malformed.
/// Every allocation copies bytes of the body, so none is larger than the input.
struct Reader<'a> {
    rest: &'a [u8],
    version: Version,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> ParseError {
        malformed(Some(self.version), reason)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.rest.len() {
            return Err(self.malformed("a field runs past the end of the packet"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Two-byte length, then that many bytes.
    fn binary(&mut self) -> Result<&'a [u8], ParseError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let bytes = self.binary()?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not utf-8"))?;
        // [MQTT-1.5.3-2]: a NUL could cut an identity short in a C broker.
        if s.contains('\0') {
            return Err(self.malformed("string contains a null character"));
        }
        Ok(s.to_owned())
    }

    /// Variable byte integer length, then that many bytes of v5 properties.
    fn properties(&mut self) -> Result<Vec<u8>, ParseError> {
        let (len, used) = match read_varint(self.rest) {
            Ok(Some(read)) => read,
            Ok(None) => return Err(self.malformed("packet ends inside a property length")),
            Err(reason) => return Err(self.malformed(reason)),
        };
        self.take(used)?;
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes a variable byte integer: `Ok(None)` when `bytes` ends inside it, else the value
/// and its length. Only minimal encodings are accepted ([MQTT-1.5.5-1]), which keeps the
/// re-encoding byte-exact.
fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, &'static str> {
    let mut value = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err("variable byte integer is not minimally encoded");
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err("variable byte integer is longer than four bytes")
    } else {
        Ok(None)
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// # Panics
/// When `value` does not fit in four bytes.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    assert!(
        value <= VARINT_MAX,
        "mqtt length {value} does not fit a variable byte integer"
    );
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// # Panics
/// When `bytes` is longer than 65535.
fn put_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    let len =
        u16::try_from(bytes.len()).expect("mqtt string or binary field longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_properties(out: &mut Vec<u8>, properties: &[u8]) {
    put_varint(out, properties.len());
    out.extend_from_slice(properties);
}

fn properties_len(properties: &[u8]) -> usize {
    varint_len(properties.len()) + properties.len()
}

impl Connect {
    /// The v5 Authentication Method property (SPEC §9: `CUSTOM-JWT`), if the client sent one.
    pub fn authentication_method(&self) -> Result<Option<&str>, properties::PropertyError> {
        Ok(
            match properties::find(&self.properties, properties::id::AUTHENTICATION_METHOD)? {
                Some(properties::Value::Str(s)) => Some(s),
                _ => None,
            },
        )
    }

    /// The v5 Authentication Data property, if the client sent one.
    pub fn authentication_data(&self) -> Result<Option<&[u8]>, properties::PropertyError> {
        Ok(
            match properties::find(&self.properties, properties::id::AUTHENTICATION_DATA)? {
                Some(properties::Value::Binary(b)) => Some(b),
                _ => None,
            },
        )
    }

    fn remaining_len(&self) -> usize {
        let v5 = self.version == Version::V5;
        let mut len = 2 + self.version.protocol_name().len() + 1 + 1 + 2;
        if v5 {
            len += properties_len(&self.properties);
        }
        len += 2 + self.client_id.len();
        if let Some(will) = &self.will {
            if v5 {
                len += properties_len(&will.properties);
            }
            len += 2 + will.topic.len() + 2 + will.payload.len();
        }
        len += self.username.as_ref().map_or(0, |u| 2 + u.len());
        len += self.password.as_ref().map_or(0, |p| 2 + p.len());
        len
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos & 0x03) << WILL_QOS_SHIFT;
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        flags
    }

    pub fn encoded_len(&self) -> usize {
        let remaining = self.remaining_len();
        1 + varint_len(remaining) + remaining
    }

    /// The two-byte-length fields, named for errors.
    fn fields(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        [
            Some(("client identifier", self.client_id.len())),
            self.will.as_ref().map(|w| ("will topic", w.topic.len())),
            self.will
                .as_ref()
                .map(|w| ("will payload", w.payload.len())),
            self.username.as_ref().map(|u| ("username", u.len())),
            self.password.as_ref().map(|p| ("password", p.len())),
        ]
        .into_iter()
        .flatten()
    }

    /// Encodes the packet as the fields say: flags follow the fields, v5 properties are
    /// written only for v5, varints are minimal. Every length is checked before anything
    /// is written, so the writers below cannot fail.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if let Some((field, _)) = self.fields().find(|&(_, len)| len > usize::from(u16::MAX)) {
            return Err(EncodeError::FieldTooLong { field });
        }
        let v5 = self.version == Version::V5;
        let remaining = self.remaining_len();
        if remaining > VARINT_MAX {
            return Err(EncodeError::TooLarge {
                len: self.encoded_len(),
            });
        }
        let mut out = Vec::with_capacity(1 + varint_len(remaining) + remaining);
        out.push(CONNECT);
        put_varint(&mut out, remaining);
        put_binary(&mut out, self.version.protocol_name());
        out.push(self.version.level());
        out.push(self.flags());
        out.extend_from_slice(&self.keep_alive.to_be_bytes());
        if v5 {
            put_properties(&mut out, &self.properties);
        }
        put_binary(&mut out, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                put_properties(&mut out, &will.properties);
            }
            put_binary(&mut out, will.topic.as_bytes());
            put_binary(&mut out, &will.payload);
        }
        if let Some(username) = &self.username {
            put_binary(&mut out, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_binary(&mut out, password);
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        Ok(out)
    }
}

/// Why mqttgate refuses a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAuthorized,
    /// v5's 0x8C: an Authentication Method mqttgate does not take (v3.x: not authorized).
    BadAuthenticationMethod,
    ServerUnavailable,
    ServerBusy,
    PacketTooLarge,
    UnsupportedProtocol,
    Malformed,
    /// SPEC §10: the authentication name holds its maximum of sessions.
    QuotaExceeded,
    /// SPEC §10: the session connected too recently.
    ConnectionRateExceeded,
}

impl Refusal {
    /// The CONNACK bytes to send before closing, or `None` when the connection is just closed.
    /// `version` is the client's version if known. `reason_string` is a v5 Reason String
    /// property, only used for v5.
    ///
    /// This is SPEC §3's table, in one place.
    pub fn connack(self, version: Option<Version>, reason_string: Option<&str>) -> Option<Vec<u8>> {
        use code::*;
        use Version::V5;
        let (version, code) = match (self, version) {
            // Like Mosquitto: the client's version is unknown, so answer in 3.1.1.
            (Refusal::UnsupportedProtocol, _) => (Version::V311, V3_UNACCEPTABLE_PROTOCOL),
            (_, None) => return None,
            (Refusal::NotAuthorized, Some(V5)) => (V5, V5_NOT_AUTHORIZED),
            (Refusal::NotAuthorized, Some(v)) => (v, V3_NOT_AUTHORIZED),
            (Refusal::BadAuthenticationMethod, Some(V5)) => (V5, V5_BAD_AUTHENTICATION_METHOD),
            (Refusal::BadAuthenticationMethod, Some(v)) => (v, V3_NOT_AUTHORIZED),
            (Refusal::ServerUnavailable, Some(V5)) => (V5, V5_SERVER_UNAVAILABLE),
            (Refusal::ServerUnavailable, Some(v)) => (v, V3_SERVER_UNAVAILABLE),
            (Refusal::ServerBusy, Some(V5)) => (V5, V5_SERVER_BUSY),
            (Refusal::ServerBusy, Some(v)) => (v, V3_SERVER_UNAVAILABLE),
            (Refusal::PacketTooLarge, Some(V5)) => (V5, V5_PACKET_TOO_LARGE),
            (Refusal::Malformed, Some(V5)) => (V5, V5_MALFORMED),
            (Refusal::QuotaExceeded, Some(V5)) => (V5, V5_QUOTA_EXCEEDED),
            (Refusal::QuotaExceeded, Some(v)) => (v, V3_SERVER_UNAVAILABLE),
            (Refusal::ConnectionRateExceeded, Some(V5)) => (V5, V5_CONNECTION_RATE_EXCEEDED),
            // 3.x has no code for it: closed, as Azure does.
            (
                Refusal::PacketTooLarge | Refusal::Malformed | Refusal::ConnectionRateExceeded,
                Some(_),
            ) => return None,
        };
        Some(connack(version, code, reason_string))
    }
}

/// A CONNACK with session present 0. v3: `20 02 00 code`; v5: `20 len 00 code props`,
/// with the reason string (cut to 65535 bytes) as the only property.
pub fn connack(version: Version, code: u8, reason_string: Option<&str>) -> Vec<u8> {
    if version != Version::V5 {
        return vec![CONNACK, 0x02, 0x00, code];
    }
    let mut properties = Vec::new();
    if let Some(reason) = reason_string {
        properties.push(PROPERTY_REASON_STRING);
        put_binary(
            &mut properties,
            truncate(reason, usize::from(u16::MAX)).as_bytes(),
        );
    }
    let remaining = 2 + properties_len(&properties);
    let mut out = Vec::with_capacity(1 + varint_len(remaining) + remaining);
    out.push(CONNACK);
    put_varint(&mut out, remaining);
    out.extend_from_slice(&[0x00, code]);
    put_properties(&mut out, &properties);
    out
}

/// The broker's v5 CONNACK at the start of `buf` with an Authentication Method property
/// added, followed by the rest of `buf` as it was: a JWT client is told the method it
/// authenticated with (MQTT-4.12.0-5), which the broker never saw. None when `buf` does
/// not start with a whole v5 CONNACK; unchanged when it already names a method.
pub fn connack_with_authentication_method(buf: &[u8], method: &str) -> Option<Vec<u8>> {
    let (&first, rest) = buf.split_first()?;
    if first != CONNACK || method.len() > usize::from(u16::MAX) {
        return None;
    }
    let (remaining, header) = read_varint(rest).ok()??;
    let body = rest.get(header..header.checked_add(remaining)?)?;
    let after = &rest[header + remaining..];
    let (flags_and_code, props) = (body.get(..2)?, &body[2..]);
    let list = match read_varint(props).ok()? {
        Some((len, n)) if n + len == props.len() => &props[n..],
        _ => return None,
    };
    if properties::find(list, properties::id::AUTHENTICATION_METHOD)
        .ok()?
        .is_some()
    {
        return Some(buf.to_vec());
    }
    let mut list = list.to_vec();
    list.push(properties::id::AUTHENTICATION_METHOD);
    put_binary(&mut list, method.as_bytes());
    let remaining = 2 + properties_len(&list);
    let mut out = Vec::with_capacity(1 + varint_len(remaining) + remaining + after.len());
    out.push(CONNACK);
    put_varint(&mut out, remaining);
    out.extend_from_slice(flags_and_code);
    put_properties(&mut out, &list);
    out.extend_from_slice(after);
    Some(out)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A v5 DISCONNECT with `reason` and no properties: `e0 02 reason 00`.
pub fn disconnect_v5(reason: u8) -> Vec<u8> {
    vec![DISCONNECT, 0x02, reason, 0x00]
}

/// Tracks MQTT packet boundaries in a byte stream without buffering it: broker -> client,
/// so the relay can inject a DISCONNECT only between packets; client -> broker, so the
/// relay knows a session the client ended with DISCONNECT.
///
/// The broker is trusted to frame its packets; if a remaining length runs past four bytes
/// the stream is treated as lost and no boundary is reported again.
#[derive(Default, Debug, Clone)]
pub struct PacketBoundary {
    /// Fixed header bytes seen of the current packet (0 between packets, at most 4 mid-header).
    header_len: u8,
    /// The remaining length decoded so far.
    len: usize,
    /// Body bytes still to skip.
    body_left: usize,
    /// The first byte of the packet in progress, or of the last one once it is complete.
    first: u8,
    lost: bool,
}

impl PacketBoundary {
    /// Follows `bytes`; work is proportional to the header bytes in it, bodies are skipped.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            if self.header_len == 0 {
                // The packet type byte.
                self.header_len = 1;
                self.len = 0;
                self.first = byte;
                continue;
            }
            self.len |= usize::from(byte & 0x7F) << (7 * (self.header_len - 1));
            self.header_len += 1;
            if byte & 0x80 == 0 {
                self.header_len = 0;
                self.body_left = self.len;
            } else if self.header_len == 5 {
                self.lost = true;
            }
        }
    }

    /// True when the bytes fed so far end exactly at a packet end.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.header_len == 0 && self.body_left == 0
    }

    /// True when the bytes fed so far end exactly after a whole DISCONNECT (any version).
    pub fn ends_after_disconnect(&self) -> bool {
        self.at_boundary() && self.first >> 4 == DISCONNECT >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Version::{V31, V311, V5};

    const MAX: usize = 64 * 1024;

    // CONNECTs captured from mosquitto_pub 2.0.11 (NOTES.md).
    const V31_CLEAN: &str = "101300064d51497364700302003c0005636c693331";
    const V311_CLEAN: &str = "101200044d5154540402003c0006636c69333131";
    const V311_WILL_USER_PASSWORD: &str = "103200044d51545404ee003c0007636c6933313177000677696c6c2f740003627965000475736572000a70c3a4737377c3b67264";
    const V5_USER_PASSWORD_PROPERTIES: &str = "103a00044d51545405c2003c1d1100000e102600026b310002763121001427000186a022000a170119010004636c6935000575736572350003707735";
    const V5_WILL_PROPERTIES: &str = "106700044d51545405d6003c08110000000a2100140005636c69357731180000001e0101020000003c03000a746578742f706c61696e080006726573702f74090003616263260002776b00027776000777696c6c2f7435000462796535000575736572350003707735";
    const VECTORS: [&str; 5] = [
        V31_CLEAN,
        V311_CLEAN,
        V311_WILL_USER_PASSWORD,
        V5_USER_PASSWORD_PROPERTIES,
        V5_WILL_PROPERTIES,
    ];

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn parse(bytes: &[u8]) -> Connect {
        let (connect, consumed) = parse_connect(bytes, MAX).unwrap().unwrap();
        assert_eq!(consumed, bytes.len());
        connect
    }

    /// A packet from a fixed header byte and a body, with a minimal remaining length.
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        put_varint(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT body: protocol name, level, flags, keep alive 60, then `rest`.
    fn body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_binary(&mut out, name);
        out.extend_from_slice(&[level, flags, 0x00, 0x3c]);
        out.extend_from_slice(rest);
        out
    }

    fn v311(flags: u8, rest: &[u8]) -> Vec<u8> {
        packet(CONNECT, &body(b"MQTT", 4, flags, rest))
    }

    fn assert_malformed(bytes: &[u8], version: Option<Version>, reason: &str) {
        match parse_connect(bytes, MAX) {
            Err(ParseError::Malformed {
                version: got_version,
                reason: got_reason,
            }) => assert_eq!((got_version, got_reason), (version, reason)),
            other => panic!("expected malformed ({reason}), got {other:?}"),
        }
    }

    #[test]
    fn mqtt_3_1_connect_parses_to_its_fields() {
        assert_eq!(
            parse(&hex(V31_CLEAN)),
            Connect {
                version: V31,
                clean_start: true,
                keep_alive: 60,
                properties: vec![],
                client_id: "cli31".into(),
                will: None,
                username: None,
                password: None,
            }
        );
    }

    #[test]
    fn mqtt_3_1_1_connect_parses_to_its_fields() {
        assert_eq!(
            parse(&hex(V311_CLEAN)),
            Connect {
                version: V311,
                clean_start: true,
                keep_alive: 60,
                properties: vec![],
                client_id: "cli311".into(),
                will: None,
                username: None,
                password: None,
            }
        );
    }

    #[test]
    fn mqtt_3_1_1_will_and_utf8_password_parse_to_their_fields() {
        assert_eq!(
            parse(&hex(V311_WILL_USER_PASSWORD)),
            Connect {
                version: V311,
                clean_start: true,
                keep_alive: 60,
                properties: vec![],
                client_id: "cli311w".into(),
                will: Some(Will {
                    properties: vec![],
                    topic: "will/t".into(),
                    payload: b"bye".to_vec(),
                    qos: 1,
                    retain: true,
                }),
                username: Some("user".into()),
                password: Some("pässwörd".as_bytes().to_vec()),
            }
        );
    }

    #[test]
    fn mqtt_5_properties_are_kept_opaque() {
        assert_eq!(
            parse(&hex(V5_USER_PASSWORD_PROPERTIES)),
            Connect {
                version: V5,
                clean_start: true,
                keep_alive: 60,
                properties: hex("1100000e102600026b310002763121001427000186a022000a17011901"),
                client_id: "cli5".into(),
                will: None,
                username: Some("user5".into()),
                password: Some(b"pw5".to_vec()),
            }
        );
    }

    #[test]
    fn mqtt_5_will_properties_are_kept_opaque() {
        assert_eq!(
            parse(&hex(V5_WILL_PROPERTIES)),
            Connect {
                version: V5,
                clean_start: true,
                keep_alive: 60,
                properties: hex("110000000a210014"),
                client_id: "cli5w".into(),
                will: Some(Will {
                    properties: hex(
                        "180000001e0101020000003c03000a746578742f706c61696e080006726573702f74090003616263260002776b00027776"
                    ),
                    topic: "will/t5".into(),
                    payload: b"bye5".to_vec(),
                    qos: 2,
                    retain: false,
                }),
                username: Some("user5".into()),
                password: Some(b"pw5".to_vec()),
            }
        );
    }

    #[test]
    fn captured_vectors_reencode_byte_identically() {
        for vector in VECTORS {
            let bytes = hex(vector);
            let connect = parse(&bytes);
            assert_eq!(connect.encoded_len(), bytes.len(), "{vector}");
            assert_eq!(connect.encode().unwrap(), bytes, "{vector}");
        }
    }

    #[test]
    fn every_proper_prefix_needs_more_bytes() {
        for vector in VECTORS {
            let bytes = hex(vector);
            for end in 0..bytes.len() {
                assert_eq!(
                    parse_connect(&bytes[..end], MAX),
                    Ok(None),
                    "{vector} [..{end}]"
                );
            }
            assert!(parse_connect(&bytes, MAX).unwrap().is_some());
        }
    }

    #[test]
    fn pipelined_bytes_are_not_consumed() {
        let subscribe = hex("8209000100046124746f7001");
        for vector in VECTORS {
            let mut bytes = hex(vector);
            let len = bytes.len();
            bytes.extend_from_slice(&subscribe);
            let (_, consumed) = parse_connect(&bytes, MAX).unwrap().unwrap();
            assert_eq!(consumed, len, "{vector}");
        }
    }

    #[test]
    fn connect_may_be_exactly_the_limit() {
        let bytes = hex(V311_CLEAN);
        assert!(parse_connect(&bytes, bytes.len()).unwrap().is_some());
    }

    #[test]
    fn first_packet_other_than_connect_is_not_connect() {
        for (bytes, packet_type) in [
            (vec![0x30, 0x00], 3),
            (vec![0xc0, 0x00], 12),
            (vec![0x00], 0),
        ] {
            assert_eq!(
                parse_connect(&bytes, MAX),
                Err(ParseError::NotConnect { packet_type })
            );
        }
    }

    #[test]
    fn connect_with_header_flags_is_malformed() {
        let mut bytes = hex(V311_CLEAN);
        bytes[0] = 0x12;
        assert_malformed(&bytes, None, "connect fixed header flags are not zero");
    }

    #[test]
    fn remaining_length_over_four_bytes_is_malformed() {
        assert_malformed(
            &[0x10, 0xff, 0xff, 0xff, 0xff],
            None,
            "variable byte integer is longer than four bytes",
        );
        assert_eq!(parse_connect(&[0x10, 0xff, 0xff, 0xff], MAX), Ok(None));
    }

    #[test]
    fn non_minimal_remaining_length_is_malformed() {
        let mut bytes = vec![0x10, 0x92, 0x00];
        bytes.extend_from_slice(&hex(V311_CLEAN)[2..]);
        assert_malformed(
            &bytes,
            None,
            "variable byte integer is not minimally encoded",
        );
    }

    #[test]
    fn string_running_past_the_packet_is_malformed() {
        // Client id length 7 where 6 bytes remain.
        let mut bytes = hex(V311_CLEAN);
        bytes[13] = 7;
        assert_malformed(
            &bytes,
            Some(V311),
            "a field runs past the end of the packet",
        );
        // A complete packet cut inside the password.
        let full = hex(V311_WILL_USER_PASSWORD);
        let cut = packet(CONNECT, &full[2..full.len() - 3]);
        assert_malformed(&cut, Some(V311), "a field runs past the end of the packet");
        // A complete packet cut inside the keep alive.
        let cut = packet(CONNECT, &full[2..11]);
        assert_malformed(&cut, Some(V311), "a field runs past the end of the packet");
    }

    #[test]
    fn packet_cut_inside_the_protocol_name_is_malformed() {
        assert_malformed(
            &packet(CONNECT, &[0x00, 0x04, b'M', b'Q']),
            None,
            "packet ends inside the protocol name",
        );
    }

    #[test]
    fn client_id_that_is_not_utf8_is_malformed() {
        assert_malformed(
            &v311(0x02, &[0x00, 0x02, 0xc3, 0x28]),
            Some(V311),
            "string is not utf-8",
        );
    }

    #[test]
    fn string_with_a_null_character_is_malformed() {
        assert_malformed(
            &v311(0x82, &[0x00, 0x01, b'c', 0x00, 0x02, b'u', 0x00]),
            Some(V311),
            "string contains a null character",
        );
    }

    #[test]
    fn unknown_protocol_name_is_malformed_without_a_version() {
        let client_id = [0x00, 0x01, b'c'];
        for (name, level) in [(&b"MQTX"[..], 4), (b"MQIsdX", 3), (b"MQTTT", 4), (b"", 4)] {
            let bytes = packet(CONNECT, &body(name, level, 0x02, &client_id));
            assert_malformed(&bytes, None, "unknown protocol name");
        }
    }

    #[test]
    fn unsupported_level_of_a_known_protocol_is_refused() {
        let client_id = [0x00, 0x01, b'c'];
        for (name, level) in [
            (&b"MQTT"[..], 3),
            (b"MQTT", 6),
            (b"MQIsdp", 4),
            (b"MQTT", 0),
        ] {
            let bytes = packet(CONNECT, &body(name, level, 0x02, &client_id));
            let err = parse_connect(&bytes, MAX).unwrap_err();
            assert_eq!(err, ParseError::UnsupportedProtocol { level });
            assert_eq!(err.version(), None);
            assert_eq!(err.refusal(), Refusal::UnsupportedProtocol);
        }
    }

    #[test]
    fn reserved_connect_flag_is_malformed() {
        let mut bytes = hex(V311_CLEAN);
        bytes[9] |= 0x01;
        assert_malformed(&bytes, Some(V311), "reserved connect flag is set");
    }

    #[test]
    fn will_qos_3_is_malformed() {
        let mut bytes = hex(V311_WILL_USER_PASSWORD);
        bytes[9] |= 0x18;
        assert_malformed(&bytes, Some(V311), "will qos is 3");
    }

    #[test]
    fn will_qos_or_retain_without_will_is_malformed() {
        for flags in [0x0a, 0x12, 0x22] {
            let mut bytes = hex(V311_CLEAN);
            bytes[9] = flags;
            assert_malformed(
                &bytes,
                Some(V311),
                "will qos or retain is set without the will flag",
            );
        }
    }

    #[test]
    fn password_without_username_is_malformed_before_v5() {
        let client_and_password = [0x00, 0x01, b'c', 0x00, 0x02, 0xff, 0x00];
        assert_malformed(
            &v311(0x42, &client_and_password),
            Some(V311),
            "password flag is set without the username flag",
        );
        assert_malformed(
            &packet(CONNECT, &body(b"MQIsdp", 3, 0x42, &client_and_password)),
            Some(V31),
            "password flag is set without the username flag",
        );
    }

    #[test]
    fn password_without_username_is_allowed_in_v5() {
        let bytes = packet(
            CONNECT,
            &body(
                b"MQTT",
                5,
                0x42,
                &[0x00, 0x00, 0x01, b'c', 0x00, 0x02, 0xff, 0x00],
            ),
        );
        let connect = parse(&bytes);
        assert_eq!(connect.username, None);
        assert_eq!(connect.password, Some(vec![0xff, 0x00]));
        assert_eq!(connect.encode(), Ok(bytes));
    }

    #[test]
    fn empty_username_is_kept_apart_from_no_username() {
        let bytes = v311(0x82, &[0x00, 0x01, b'c', 0x00, 0x00]);
        let connect = parse(&bytes);
        assert_eq!(connect.username, Some(String::new()));
        assert_eq!(connect.encode(), Ok(bytes));
    }

    #[test]
    fn empty_client_id_is_allowed() {
        let connect = parse(&v311(0x02, &[0x00, 0x00]));
        assert_eq!(connect.client_id, "");
    }

    #[test]
    fn trailing_bytes_inside_the_packet_are_malformed() {
        let full = hex(V311_CLEAN);
        let mut body = full[2..].to_vec();
        body.push(0x00);
        assert_malformed(
            &packet(CONNECT, &body),
            Some(V311),
            "bytes left after the last field",
        );
    }

    #[test]
    fn property_length_running_past_the_packet_is_malformed() {
        let bytes = packet(CONNECT, &body(b"MQTT", 5, 0x02, &[0x05, 0x11, 0x00]));
        assert_malformed(&bytes, Some(V5), "a field runs past the end of the packet");
        let bytes = packet(CONNECT, &body(b"MQTT", 5, 0x02, &[0x80]));
        assert_malformed(&bytes, Some(V5), "packet ends inside a property length");
    }

    /// A fixed header announcing `remaining` bytes, then the protocol name and level.
    fn oversized(name: &[u8], level: u8, remaining: usize) -> Vec<u8> {
        let mut bytes = vec![CONNECT];
        put_varint(&mut bytes, remaining);
        put_binary(&mut bytes, name);
        bytes.push(level);
        bytes
    }

    #[test]
    fn oversized_v5_connect_is_refused_with_its_version_after_the_level() {
        let bytes = oversized(b"MQTT", 5, 100 * 1024);
        assert_eq!(bytes.len(), 11);
        for end in 0..bytes.len() {
            assert_eq!(parse_connect(&bytes[..end], MAX), Ok(None), "[..{end}]");
        }
        let err = parse_connect(&bytes, MAX).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooLarge {
                len: 100 * 1024 + 4,
                max: MAX,
                version: Some(V5)
            }
        );
        assert_eq!(
            err.refusal().connack(err.version(), None),
            Some(vec![0x20, 0x03, 0x00, 0x95, 0x00])
        );
    }

    #[test]
    fn oversized_v3_connect_is_refused_with_its_version() {
        let err = parse_connect(&oversized(b"MQTT", 4, 100 * 1024), MAX).unwrap_err();
        assert_eq!(err.version(), Some(V311));
        assert_eq!(err.refusal().connack(err.version(), None), None);
        let err = parse_connect(&oversized(b"MQIsdp", 3, 100 * 1024), MAX).unwrap_err();
        assert_eq!(err.version(), Some(V31));
    }

    #[test]
    fn oversized_connect_with_unknown_protocol_is_refused_without_a_version() {
        let bytes = oversized(b"HTTP/1.1", 4, 100 * 1024);
        assert_eq!(
            parse_connect(&bytes[..6], MAX),
            Err(ParseError::TooLarge {
                len: 100 * 1024 + 4,
                max: MAX,
                version: None
            })
        );
    }

    #[test]
    fn oversized_connect_never_needs_more_than_the_limit() {
        let bytes = oversized(b"MQTT", 5, 1000);
        assert_eq!(parse_connect(&bytes[..3], 4), Ok(None));
        assert_eq!(
            parse_connect(&bytes[..4], 4),
            Err(ParseError::TooLarge {
                len: 1003,
                max: 4,
                version: None
            })
        );
    }

    #[test]
    fn refusal_connacks_follow_the_spec_table() {
        use Refusal::*;
        let v3 = |code| Some(vec![0x20, 0x02, 0x00, code]);
        let v5 = |code| Some(vec![0x20, 0x03, 0x00, code, 0x00]);
        let rows = [
            (NotAuthorized, v5(0x87), v3(0x05)),
            (ServerUnavailable, v5(0x88), v3(0x03)),
            (ServerBusy, v5(0x89), v3(0x03)),
            (PacketTooLarge, v5(0x95), None),
            (UnsupportedProtocol, v3(0x01), v3(0x01)),
            (Malformed, v5(0x81), None),
        ];
        for (refusal, for_v5, for_v3) in rows {
            assert_eq!(refusal.connack(Some(V5), None), for_v5, "{refusal:?} v5");
            assert_eq!(
                refusal.connack(Some(V311), None),
                for_v3,
                "{refusal:?} v3.1.1"
            );
            assert_eq!(refusal.connack(Some(V31), None), for_v3, "{refusal:?} v3.1");
            let unknown = (refusal == UnsupportedProtocol).then(|| vec![0x20, 0x02, 0x00, 0x01]);
            assert_eq!(refusal.connack(None, None), unknown, "{refusal:?} unknown");
        }
    }

    #[test]
    fn reason_string_is_sent_only_to_v5() {
        assert_eq!(
            Refusal::NotAuthorized.connack(Some(V5), Some("no")),
            Some(vec![
                0x20, 0x08, 0x00, 0x87, 0x05, 0x1f, 0x00, 0x02, b'n', b'o'
            ])
        );
        assert_eq!(
            Refusal::NotAuthorized.connack(Some(V311), Some("no")),
            Some(vec![0x20, 0x02, 0x00, 0x05])
        );
        assert_eq!(
            Refusal::UnsupportedProtocol.connack(Some(V5), Some("no")),
            Some(vec![0x20, 0x02, 0x00, 0x01])
        );
    }

    #[test]
    fn long_reason_string_is_cut_on_a_character_boundary() {
        let reason = "ä".repeat(40_000);
        let bytes = connack(V5, code::V5_NOT_AUTHORIZED, Some(&reason));
        // 20, 3-byte length, 00 87, 3-byte property length, 1f, u16 length, 65534 bytes.
        assert_eq!(&bytes[..4], &[0x20, 0x86, 0x80, 0x04]);
        assert_eq!(&bytes[9..12], &[0x1f, 0xff, 0xfe]);
        assert_eq!(bytes.len(), 12 + 65534);
    }

    #[test]
    fn disconnect_v5_carries_the_reason() {
        assert_eq!(
            disconnect_v5(code::V5_ADMINISTRATIVE_ACTION),
            vec![0xe0, 0x02, 0x98, 0x00]
        );
        assert_eq!(
            disconnect_v5(code::V5_SERVER_SHUTTING_DOWN),
            vec![0xe0, 0x02, 0x8b, 0x00]
        );
    }

    #[test]
    fn parse_errors_map_to_refusals() {
        assert_eq!(
            ParseError::NotConnect { packet_type: 3 }.refusal(),
            Refusal::Malformed
        );
        let err = parse_connect(&[0x10, 0x80, 0x00], MAX).unwrap_err();
        assert_eq!(err.refusal().connack(err.version(), None), None);
        let mut bytes = hex(V5_USER_PASSWORD_PROPERTIES);
        bytes[9] |= 0x01;
        let err = parse_connect(&bytes, MAX).unwrap_err();
        assert_eq!(
            err.refusal().connack(err.version(), None),
            Some(vec![0x20, 0x03, 0x00, 0x81, 0x00])
        );
    }

    #[test]
    fn rewritten_identity_keeps_every_other_field() {
        for vector in VECTORS {
            let original = parse(&hex(vector));
            let mut rewritten = original.clone();
            rewritten.username = Some("sensor-17".into());
            rewritten.password = None;
            rewritten.client_id = "sensor-17".into();
            let bytes = rewritten.encode().unwrap();
            assert_eq!(bytes.len(), rewritten.encoded_len());
            assert_eq!(
                parse(&bytes),
                Connect {
                    client_id: "sensor-17".into(),
                    username: Some("sensor-17".into()),
                    password: None,
                    ..original
                },
                "{vector}"
            );
        }
    }

    #[test]
    fn over_long_fields_are_an_encode_error_not_a_panic() {
        let mut connect = parse(&hex(V311_CLEAN));
        connect.client_id = "x".repeat(usize::from(u16::MAX) + 1);
        assert_eq!(
            connect.encode(),
            Err(EncodeError::FieldTooLong {
                field: "client identifier"
            })
        );
        connect.client_id = "x".repeat(usize::from(u16::MAX));
        assert!(connect.encode().is_ok(), "65535 bytes fit");
        connect.username = Some("u".repeat(70_000));
        assert_eq!(
            connect.encode(),
            Err(EncodeError::FieldTooLong { field: "username" })
        );
    }

    #[test]
    fn connect_over_the_mqtt_maximum_is_an_encode_error_not_a_panic() {
        let mut connect = parse(&hex(V5_USER_PASSWORD_PROPERTIES));
        // Zeroed allocations stay untouched until written: this costs no real memory.
        connect.properties = vec![0; VARINT_MAX];
        assert!(matches!(
            connect.encode(),
            Err(EncodeError::TooLarge { len }) if len > VARINT_MAX
        ));
    }

    #[test]
    fn connack_code_reads_past_a_long_remaining_length() {
        assert_eq!(connack_code(&[0x20, 0x02, 0x00, 0x05]), Some(0x05));
        assert_eq!(connack_code(&[0x20, 0x03, 0x01, 0x87, 0x00]), Some(0x87));
        // v5, session present, 0x87, a 200-byte User Property: remaining length 210 = d2 01.
        let mut properties = vec![0x26, 0x00, 0x01, b'k', 0x00, 200];
        properties.extend_from_slice(&[b'v'; 200]);
        let mut body = vec![0x01, 0x87];
        put_properties(&mut body, &properties);
        let long = packet(CONNACK, &body);
        assert_eq!(&long[..4], &[0x20, 0xd2, 0x01, 0x01]);
        assert_eq!(connack_code(&long), Some(0x87));
        // With bytes the broker sent after it.
        assert_eq!(
            connack_code(&[&long[..], &[0xd0, 0x00]].concat()),
            Some(0x87)
        );
        for end in 0..long.len() {
            assert_eq!(connack_code(&long[..end]), None, "[..{end}]");
        }
        // mqttgate's own refusals, reason string included.
        let own = connack(V5, code::V5_SERVER_BUSY, Some(&"busy ".repeat(40)));
        assert!(own[1] & 0x80 != 0);
        assert_eq!(connack_code(&own), Some(code::V5_SERVER_BUSY));
    }

    #[test]
    fn a_jwt_client_s_connack_gains_its_authentication_method_and_keeps_the_rest() {
        // A v5 success CONNACK with topic alias maximum 16, then a PUBLISH.
        let connack = hex("2006000003220010");
        let mut buf = connack.clone();
        buf.extend_from_slice(&hex("300400017878"));
        let out = connack_with_authentication_method(&buf, "CUSTOM-JWT").unwrap();
        // Remaining length 19: flags, code, property length 16, the alias, the method.
        let mut want = hex("20130000102200101500");
        want.push(10);
        want.extend_from_slice(b"CUSTOM-JWT");
        want.extend_from_slice(&hex("300400017878"));
        assert_eq!(out, want);
        assert_eq!(connack_code(&out), Some(0x00));
        // Already there: unchanged. Not a whole v5 CONNACK: None.
        assert_eq!(
            connack_with_authentication_method(&out, "CUSTOM-JWT").as_deref(),
            Some(&out[..])
        );
        assert_eq!(
            connack_with_authentication_method(&hex("20020000"), "X"),
            None
        );
        assert_eq!(connack_with_authentication_method(&connack[..5], "X"), None);
        assert_eq!(
            connack_with_authentication_method(&hex("300400017878"), "X"),
            None
        );
    }

    #[test]
    fn a_bad_authentication_method_is_0x8c_for_v5_and_not_authorized_for_v3() {
        assert_eq!(
            Refusal::BadAuthenticationMethod.connack(Some(Version::V5), None),
            Some(hex("2003008c00"))
        );
        assert_eq!(
            Refusal::BadAuthenticationMethod.connack(Some(Version::V311), None),
            Some(hex("20020005"))
        );
    }

    #[test]
    fn connack_code_refuses_what_is_not_a_connack() {
        assert_eq!(connack_code(&[0xd0, 0x00]), None);
        assert_eq!(connack_code(&[0x21, 0x02, 0x00, 0x00]), None);
        // Too short to hold a code, and a length over four bytes.
        assert_eq!(connack_code(&[0x20, 0x01, 0x00]), None);
        assert_eq!(connack_code(&[0x20, 0xff, 0xff, 0xff, 0xff, 0x00]), None);
    }

    #[test]
    fn version_levels_and_labels() {
        assert_eq!(
            [V31, V311, V5].map(|v| (v.level(), v.label())),
            [(3, "3.1"), (4, "3.1.1"), (5, "5")]
        );
    }

    /// Checks `at_boundary` after each chunk of `stream` cut at `cuts`.
    fn check_boundaries(stream: &[u8], ends: &[bool], cuts: &[usize]) {
        let mut tracker = PacketBoundary::default();
        let mut start = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            tracker.feed(&stream[start..cut]);
            assert_eq!(tracker.at_boundary(), ends[cut], "cuts {cuts:?}, at {cut}");
            start = cut;
        }
    }

    /// The packets concatenated, and for each offset whether a packet ends there.
    fn stream_of(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<bool>) {
        let mut stream = Vec::new();
        let mut ends = vec![true];
        for packet in packets {
            stream.extend_from_slice(packet);
            ends.resize(stream.len(), false);
            ends.push(true);
        }
        (stream, ends)
    }

    #[test]
    fn packet_boundaries_are_found_in_every_split_into_three_chunks() {
        let (stream, ends) = stream_of(&[
            hex("d000"),
            hex("20020000"),
            packet(0x30, &[0xaa; 130]), // two-byte remaining length
            hex("d000"),
            // Three-byte remaining length, non-minimal so the stream stays short enough
            // for every split; brokers use minimal ones (next test).
            hex("328580000001020304"),
            hex("9003000100"),
            hex("e000"),
        ]);
        for i in 0..=stream.len() {
            check_boundaries(&stream, &ends, &[i]);
            for j in i..=stream.len() {
                check_boundaries(&stream, &ends, &[i, j]);
            }
        }
    }

    #[test]
    fn packet_boundaries_are_found_around_a_16_kib_packet() {
        let (stream, ends) = stream_of(&[
            hex("d000"),
            packet(0x30, &vec![0x55; 16_384]), // three-byte remaining length
            packet(0x30, &[0x66; 200]),
            hex("d000"),
        ]);
        assert_eq!(&stream[2..6], &[0x30, 0x80, 0x80, 0x01]);
        for i in 0..=stream.len() {
            check_boundaries(&stream, &ends, &[i]);
        }
    }

    #[test]
    fn a_stream_ending_after_a_whole_disconnect_is_seen_in_every_split() {
        let (stream, _) = stream_of(&[
            hex("101200044d5154540402003c0006636c69333131"),
            packet(0x30, &[0xaa; 130]),
            hex("c000"),
            hex("e0020000"), // v5, reason code and empty properties
        ]);
        for i in 0..=stream.len() {
            let mut tracker = PacketBoundary::default();
            tracker.feed(&stream[..i]);
            tracker.feed(&stream[i..]);
            assert!(tracker.ends_after_disconnect(), "split at {i}");
        }
        let mut tracker = PacketBoundary::default();
        assert!(!tracker.ends_after_disconnect(), "nothing yet");
        for (bytes, after_disconnect) in [
            (&[0xe0][..], false),
            (&[0x00], true),
            (&[0xc0, 0x00], false),
            (&[0xe0, 0x00, 0xc0], false),
        ] {
            tracker.feed(bytes);
            assert_eq!(
                tracker.ends_after_disconnect(),
                after_disconnect,
                "{bytes:02x?}"
            );
        }
        // A PUBLISH whose payload holds DISCONNECT's bytes is not a DISCONNECT.
        let mut tracker = PacketBoundary::default();
        tracker.feed(&packet(0x30, &[0x00, 0x01, b't', 0xe0, 0x00]));
        assert!(!tracker.ends_after_disconnect());
    }

    #[test]
    fn remaining_length_over_four_bytes_loses_the_stream() {
        let mut tracker = PacketBoundary::default();
        tracker.feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x00, 0xd0, 0x00]);
        assert!(!tracker.at_boundary());
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\\x00]{0,24}"
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..max)
    }

    fn any_will() -> impl Strategy<Value = Will> {
        (bytes(40), text(), bytes(40), 0u8..=2, any::<bool>()).prop_map(
            |(properties, topic, payload, qos, retain)| Will {
                properties,
                topic,
                payload,
                qos,
                retain,
            },
        )
    }

    /// Any CONNECT valid for its version.
    fn any_connect() -> impl Strategy<Value = Connect> {
        (
            prop_oneof![Just(V31), Just(V311), Just(V5)],
            any::<bool>(),
            any::<u16>(),
            bytes(300),
            text(),
            prop::option::of(any_will()),
            prop::option::of(text()),
            prop::option::of(bytes(40)),
        )
            .prop_map(
                |(
                    version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                )| {
                    let v5 = version == V5;
                    let mut connect = Connect {
                        version,
                        clean_start,
                        keep_alive,
                        properties: if v5 { properties } else { vec![] },
                        client_id,
                        will: will.map(|will| Will {
                            properties: if v5 { will.properties } else { vec![] },
                            ..will
                        }),
                        username,
                        password,
                    };
                    if !v5 && connect.password.is_some() && connect.username.is_none() {
                        connect.username = Some(String::new());
                    }
                    connect
                },
            )
    }

    /// Whatever parses re-encodes to exactly the bytes it came from.
    fn check_any_input(input: &[u8], max_len: usize) {
        if let Ok(Some((connect, consumed))) = parse_connect(input, max_len) {
            assert!(consumed <= max_len && consumed <= input.len());
            assert_eq!(connect.encode().unwrap(), &input[..consumed]);
        }
    }

    proptest! {
        #[test]
        fn valid_connects_round_trip(connect in any_connect()) {
            let bytes = connect.encode().unwrap();
            prop_assert_eq!(bytes.len(), connect.encoded_len());
            prop_assert_eq!(parse_connect(&bytes, bytes.len()), Ok(Some((connect, bytes.len()))));
        }

        #[test]
        fn random_bytes_never_panic(input in bytes(300)) {
            check_any_input(&input, 256);
        }

        #[test]
        fn random_bytes_after_a_connect_header_never_panic(input in bytes(300)) {
            let input = [&[CONNECT][..], &input].concat();
            check_any_input(&input, 256);
        }

        #[test]
        fn mutated_vectors_never_panic(
            vector in 0..VECTORS.len(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut input = hex(VECTORS[vector]);
            let at = at.index(input.len());
            input[at] = byte;
            check_any_input(&input, 256);
        }
    }
}
