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
    pub const V5_CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
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
    /// MQTT-3.1.3-8: a v3.1.1 CONNECT with an empty ClientId and CleanSession=0.
    IdentifierRejected,
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
            (Refusal::IdentifierRejected, Some(V5)) => (V5, V5_CLIENT_IDENTIFIER_NOT_VALID),
            (Refusal::IdentifierRejected, Some(v)) => (v, V3_IDENTIFIER_REJECTED),
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

/// What mqttgate tells a v5 client in its CONNACK that the broker was never in a
/// position to say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnackAdditions<'a> {
    /// The Authentication Method it authenticated with (MQTT-4.12.0-5).
    pub authentication_method: Option<&'a str>,
    /// The ClientId mqttgate assigned to an empty one (MQTT 5 §3.2.2.3.7).
    pub assigned_client_id: Option<&'a str>,
    /// The Session Expiry Interval used, when capped (MQTT 5 §3.2.2.3.2).
    pub session_expiry: Option<u32>,
}

impl ConnackAdditions<'_> {
    pub fn is_empty(&self) -> bool {
        *self == ConnackAdditions::default()
    }
}

/// The broker's v5 CONNACK at the start of `buf` with an Authentication Method property
/// added, followed by the rest of `buf` as it was: a JWT client is told the method it
/// authenticated with (MQTT-4.12.0-5), which the broker never saw. None when `buf` does
/// not start with a whole v5 CONNACK; unchanged when it already names a method.
pub fn connack_with_authentication_method(buf: &[u8], method: &str) -> Option<Vec<u8>> {
    connack_with(
        buf,
        &ConnackAdditions {
            authentication_method: Some(method),
            ..ConnackAdditions::default()
        },
    )
}

/// The broker's v5 CONNACK at the start of `buf` with `add`'s properties added (each one
/// the broker did not send itself), followed by the rest of `buf` as it was. None when
/// `buf` does not start with a whole v5 CONNACK.
pub fn connack_with(buf: &[u8], add: &ConnackAdditions<'_>) -> Option<Vec<u8>> {
    let (&first, rest) = buf.split_first()?;
    let too_long = |s: Option<&str>| s.is_some_and(|s| s.len() > usize::from(u16::MAX));
    if first != CONNACK || too_long(add.authentication_method) || too_long(add.assigned_client_id) {
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
    let has = |id: u8| properties::find(list, id).map(|v| v.is_some());
    let mut added = list.to_vec();
    if let (Some(m), false) = (
        add.authentication_method,
        has(properties::id::AUTHENTICATION_METHOD).ok()?,
    ) {
        added.push(properties::id::AUTHENTICATION_METHOD);
        put_binary(&mut added, m.as_bytes());
    }
    if let (Some(c), false) = (
        add.assigned_client_id,
        has(properties::id::ASSIGNED_CLIENT_IDENTIFIER).ok()?,
    ) {
        added.push(properties::id::ASSIGNED_CLIENT_IDENTIFIER);
        put_binary(&mut added, c.as_bytes());
    }
    if let (Some(e), false) = (
        add.session_expiry,
        has(properties::id::SESSION_EXPIRY_INTERVAL).ok()?,
    ) {
        added.push(properties::id::SESSION_EXPIRY_INTERVAL);
        added.extend_from_slice(&e.to_be_bytes());
    }
    if added.len() == list.len() {
        return Some(buf.to_vec());
    }
    let remaining = 2 + properties_len(&added);
    let mut out = Vec::with_capacity(1 + varint_len(remaining) + remaining + after.len());
    out.push(CONNACK);
    put_varint(&mut out, remaining);
    out.extend_from_slice(flags_and_code);
    put_properties(&mut out, &added);
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
    pub fn feed(&mut self, bytes: &[u8]) {
        self.feed_until(bytes, Self::NO_HALT);
    }

    /// A `halt` no packet type equals (types are 4 bits).
    pub const NO_HALT: u8 = 0xFF;

    /// Follows `bytes` up to the first packet of type `halt` (the high nibble of its first
    /// byte) that starts in them, and returns how many bytes it followed: all of them when
    /// no such packet starts there. The relay forwards only those (SPEC §13: an AUTH never
    /// reaches the broker). A plain `u8` rather than an `Option`: this is the relay's
    /// per-packet step.
    pub fn feed_until(&mut self, all: &[u8], halt: u8) -> usize {
        let mut bytes = all;
        while !bytes.is_empty() && !self.lost {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            if self.header_len == 0 {
                // A whole fixed header with a one- or two-byte remaining length (packets
                // under 16 KiB, nearly all of them) is taken in one step: the relay of a
                // small message spends most of its tracking here.
                let whole = match bytes {
                    [first, l0, ..] if l0 & 0x80 == 0 => Some((*first, usize::from(*l0), 2)),
                    [first, l0, l1, ..] if l1 & 0x80 == 0 => {
                        Some((*first, usize::from(l0 & 0x7F) | usize::from(*l1) << 7, 3))
                    }
                    _ => None,
                };
                if let Some((first, len, header)) = whole {
                    if first >> 4 == halt {
                        return all.len() - bytes.len();
                    }
                    self.first = first;
                    self.len = len;
                    let skip = len.min(bytes.len() - header);
                    self.body_left = len - skip;
                    bytes = &bytes[header + skip..];
                    continue;
                }
            }
            let byte = bytes[0];
            if self.header_len == 0 && byte >> 4 == halt {
                return all.len() - bytes.len();
            }
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
        // All followed, or the tracker is lost and everything passes, as before it was.
        all.len()
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
mod tests;
