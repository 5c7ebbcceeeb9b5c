//! The client packets authorization reads (PUBLISH's head, SUBSCRIBE) and the packets it
//! writes in their place (PUBACK/PUBREC with a reason, SUBACK, a SUBSCRIBE without its
//! denied filters, the broker's SUBACK with the denied codes merged back). Pure: no I/O;
//! the authorized relay owns buffering. Nothing here allocates on the PUBLISH path.

use super::properties::{self, id, Value};
use super::{put_binary, put_varint, read_varint, PacketBoundary, Version};

pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
const CONNACK: u8 = 2;

/// A packet the codec cannot read: the relay ends the session (MQTT: a protocol error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

/// A packet's fixed header: its first byte, the header's length and the body's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    pub first: u8,
    pub header_len: usize,
    pub body_len: usize,
}

impl FixedHeader {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    pub fn total(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// The fixed header at the start of `buf`, or `None` until its length bytes are in.
pub fn fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, Malformed> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    match read_varint(rest) {
        Ok(Some((body_len, n))) => Ok(Some(FixedHeader {
            first,
            header_len: 1 + n,
            body_len,
        })),
        Ok(None) => Ok(None),
        Err(_) => Err(Malformed("remaining length")),
    }
}

/// What authorization needs of a PUBLISH: everything before the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishHead<'a> {
    /// Empty when a v5 client names the topic by its alias only.
    pub topic: &'a str,
    pub qos: u8,
    pub packet_id: Option<u16>,
    pub topic_alias: Option<u16>,
}

/// The head of a PUBLISH from the start of its body, or `None` until all of it is in
/// (the payload is never needed). `body_len` bounds every field.
pub fn publish_head(
    version: Version,
    first: u8,
    body: &[u8],
    body_len: usize,
) -> Result<Option<PublishHead<'_>>, Malformed> {
    let qos = (first >> 1) & 0x03;
    if qos == 3 {
        return Err(Malformed("publish qos"));
    }
    let body = &body[..body.len().min(body_len)];
    let complete = |need: usize| -> Result<bool, Malformed> {
        if need > body_len {
            return Err(Malformed("publish header"));
        }
        Ok(body.len() >= need)
    };
    if !complete(2)? {
        return Ok(None);
    }
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut at = 2 + topic_len;
    if !complete(at)? {
        return Ok(None);
    }
    let topic = std::str::from_utf8(&body[2..at]).map_err(|_| Malformed("publish topic"))?;
    let mut packet_id = None;
    if qos > 0 {
        if !complete(at + 2)? {
            return Ok(None);
        }
        packet_id = Some(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 2;
    }
    let mut topic_alias = None;
    if version == Version::V5 {
        let (len, n) = match read_varint(&body[at..]) {
            Ok(Some(v)) => v,
            // More of the length may come, unless the body is all in.
            Ok(None) if body.len() < body_len => return Ok(None),
            _ => return Err(Malformed("publish properties")),
        };
        at += n;
        if !complete(at + len)? {
            return Ok(None);
        }
        match properties::first(&body[at..at + len], id::TOPIC_ALIAS) {
            Ok(Some(Value::TwoBytes(alias))) => topic_alias = Some(alias),
            Ok(_) => {}
            Err(_) => return Err(Malformed("publish properties")),
        }
    }
    Ok(Some(PublishHead {
        topic,
        qos,
        packet_id,
        topic_alias,
    }))
}

/// A whole SUBSCRIBE's body, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    /// v5: the property list with its length prefix, as the client sent it.
    pub properties: &'a [u8],
    /// Each filter with its options byte, in order.
    pub filters: Vec<(&'a str, u8)>,
}

pub fn parse_subscribe(version: Version, body: &[u8]) -> Result<Subscribe<'_>, Malformed> {
    let bad = Malformed("subscribe");
    let id = body.get(..2).ok_or(bad)?;
    let packet_id = u16::from_be_bytes([id[0], id[1]]);
    let mut at = 2;
    let mut props = &body[at..at];
    if version == Version::V5 {
        let (len, n) = read_varint(&body[at..]).ok().flatten().ok_or(bad)?;
        props = body.get(at..at + n + len).ok_or(bad)?;
        at += n + len;
    }
    let mut filters = Vec::new();
    while at < body.len() {
        let len = body.get(at..at + 2).ok_or(bad)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let filter = body.get(at + 2..at + 2 + len).ok_or(bad)?;
        let filter = std::str::from_utf8(filter).map_err(|_| bad)?;
        let options = *body.get(at + 2 + len).ok_or(bad)?;
        filters.push((filter, options));
        at += 3 + len;
    }
    if filters.is_empty() {
        return Err(bad);
    }
    Ok(Subscribe {
        packet_id,
        properties: props,
        filters,
    })
}

/// A SUBSCRIBE with the same packet identifier and properties and only `filters`.
pub fn encode_subscribe<'a>(
    sub: &Subscribe<'_>,
    filters: impl Iterator<Item = (&'a str, u8)>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&sub.packet_id.to_be_bytes());
    body.extend_from_slice(sub.properties);
    for (filter, options) in filters {
        put_binary(&mut body, filter.as_bytes());
        body.push(options);
    }
    packet(SUBSCRIBE << 4 | 0x02, &body)
}

/// A SUBACK mqttgate answers itself: no properties.
pub fn suback(version: Version, packet_id: u16, codes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(3 + codes.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    if version == Version::V5 {
        body.push(0);
    }
    body.extend_from_slice(codes);
    packet(SUBACK << 4, &body)
}

/// The packet identifier of a SUBACK body.
pub fn suback_packet_id(body: &[u8]) -> Option<u16> {
    body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The broker's SUBACK for a SUBSCRIBE mqttgate cut down, with the codes of the filters it
/// kept back put in their places: `codes[i]` is `Some(denial code)` for a filter mqttgate
/// refused and `None` for one the broker answered, in the client's order. The broker's
/// properties are kept. `None` when the broker's codes do not match the filters it got.
pub fn merge_suback(version: Version, body: &[u8], codes: &[Option<u8>]) -> Option<Vec<u8>> {
    let mut at = 2;
    if version == Version::V5 {
        let (len, n) = read_varint(body.get(at..)?).ok()??;
        at += n + len;
    }
    let head = body.get(..at)?;
    let mut broker = body.get(at..)?.iter();
    let mut merged = Vec::with_capacity(body.len() + codes.len());
    merged.extend_from_slice(head);
    for code in codes {
        merged.push(match code {
            Some(denied) => *denied,
            None => *broker.next()?,
        });
    }
    if broker.next().is_some() {
        return None;
    }
    Some(packet(SUBACK << 4, &merged))
}

/// A v5 PUBACK or PUBREC with a reason code and no properties.
pub fn ack_v5(kind: u8, packet_id: u16, reason: u8) -> [u8; 5] {
    let id = packet_id.to_be_bytes();
    [kind << 4, 0x03, id[0], id[1], reason]
}

/// The Topic Alias Maximum of the broker's v5 CONNACK (0 when absent: no aliases).
pub fn connack_topic_alias_max(buf: &[u8]) -> u16 {
    let Ok(Some(h)) = fixed_header(buf) else {
        return 0;
    };
    if h.kind() != CONNACK {
        return 0;
    }
    let Some(body) = buf.get(h.header_len..h.total()) else {
        return 0;
    };
    let Some(Ok(Some((len, n)))) = body.get(2..).map(read_varint) else {
        return 0;
    };
    match body
        .get(2 + n..2 + n + len)
        .map(|p| properties::first(p, id::TOPIC_ALIAS_MAXIMUM))
    {
        Some(Ok(Some(Value::TwoBytes(max)))) => max,
        _ => 0,
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

impl PacketBoundary {
    /// Feeds `bytes` up to the end of the packet in progress and returns how many it took;
    /// all of them when the packet goes on past them. Between packets, a whole packet is
    /// taken at most.
    pub fn feed_to_boundary(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() && !self.lost {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len() - taken);
                self.feed(&bytes[taken..taken + n]);
                taken += n;
            } else {
                self.feed(&bytes[taken..taken + 1]);
                taken += 1;
            }
            if self.at_boundary() {
                break;
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(
        version: Version,
        qos: u8,
        topic: &str,
        alias: Option<u16>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        put_binary(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&7u16.to_be_bytes());
        }
        if version == Version::V5 {
            let mut props = vec![0x01, 0x01]; // payload format indicator
            if let Some(a) = alias {
                props.push(id::TOPIC_ALIAS);
                props.extend_from_slice(&a.to_be_bytes());
            }
            put_varint(&mut body, props.len());
            body.extend_from_slice(&props);
        }
        body.extend_from_slice(payload);
        packet(PUBLISH << 4 | qos << 1, &body)
    }

    fn head_of(version: Version, bytes: &[u8]) -> Result<Option<PublishHead<'_>>, Malformed> {
        let h = match fixed_header(bytes)? {
            Some(h) => h,
            None => return Ok(None),
        };
        publish_head(version, h.first, &bytes[h.header_len..], h.body_len)
    }

    #[test]
    fn every_prefix_of_a_publish_head_waits_and_the_head_needs_no_payload() {
        for (version, qos, alias) in [
            (Version::V311, 0, None),
            (Version::V311, 1, None),
            (Version::V5, 2, Some(3)),
            (Version::V5, 0, None),
        ] {
            let bytes = publish(version, qos, "a/b", alias, b"payload");
            let head_end = bytes.len() - 7;
            for cut in 0..head_end {
                assert_eq!(
                    head_of(version, &bytes[..cut]),
                    Ok(None),
                    "{version:?} {cut}"
                );
            }
            let want = PublishHead {
                topic: "a/b",
                qos,
                packet_id: (qos > 0).then_some(7),
                topic_alias: alias,
            };
            assert_eq!(head_of(version, &bytes[..head_end]), Ok(Some(want)));
            assert_eq!(head_of(version, &bytes), Ok(Some(want)));
        }
    }

    #[test]
    fn an_alias_only_publish_has_an_empty_topic() {
        let bytes = publish(Version::V5, 1, "", Some(2), b"x");
        let head = head_of(Version::V5, &bytes).unwrap().unwrap();
        assert_eq!((head.topic, head.topic_alias), ("", Some(2)));
    }

    #[test]
    fn a_head_longer_than_its_packet_or_qos_3_is_malformed() {
        // Topic length 10 in a 4-byte body.
        assert!(head_of(Version::V311, &[0x30, 0x04, 0x00, 0x0a, b'a', b'b']).is_err());
        assert!(head_of(Version::V311, &[0x36, 0x04, 0x00, 0x01, b'a', b'b']).is_err());
        // Not UTF-8.
        assert!(head_of(Version::V311, &[0x30, 0x03, 0x00, 0x01, 0xff]).is_err());
    }

    #[test]
    fn a_subscribe_cut_down_keeps_its_id_properties_and_order() {
        let mut body = 9u16.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x02, 0x0b, 0x05]); // subscription identifier 5
        for f in ["a/#", "b/+", "c"] {
            put_binary(&mut body, f.as_bytes());
            body.push(0x01);
        }
        let sub = parse_subscribe(Version::V5, &body).unwrap();
        assert_eq!(sub.packet_id, 9);
        assert_eq!(sub.filters, vec![("a/#", 1), ("b/+", 1), ("c", 1)]);
        let cut = encode_subscribe(&sub, sub.filters.iter().copied().filter(|f| f.0 != "b/+"));
        let h = fixed_header(&cut).unwrap().unwrap();
        assert_eq!(cut[0], 0x82);
        let again = parse_subscribe(Version::V5, &cut[h.header_len..]).unwrap();
        assert_eq!(again.properties, sub.properties);
        assert_eq!(again.filters, vec![("a/#", 1), ("c", 1)]);
        assert!(
            parse_subscribe(Version::V311, &[0, 1]).is_err(),
            "no filters"
        );
        assert!(parse_subscribe(Version::V311, &[0, 1, 0, 5, b'a']).is_err());
    }

    #[test]
    fn the_brokers_suback_gets_the_denied_codes_back_in_place() {
        // v5 SUBACK body: id 9, a reason string property, codes for two kept filters.
        let body = [0x00, 0x09, 0x04, 0x1f, 0x00, 0x01, b'r', 0x01, 0x00];
        let merged = merge_suback(Version::V5, &body, &[None, Some(0x87), None]).unwrap();
        assert_eq!(
            merged,
            [0x90, 0x0a, 0x00, 0x09, 0x04, 0x1f, 0x00, 0x01, b'r', 0x01, 0x87, 0x00]
        );
        let v3 = merge_suback(Version::V311, &[0, 9, 0x00], &[Some(0x80), None]).unwrap();
        assert_eq!(v3, [0x90, 0x04, 0, 9, 0x80, 0x00]);
        assert_eq!(merge_suback(Version::V311, &[0, 9, 0, 0], &[None]), None);
        assert_eq!(suback(Version::V5, 3, &[0x87]), [0x90, 0x04, 0, 3, 0, 0x87]);
        assert_eq!(suback(Version::V311, 3, &[0x80]), [0x90, 0x03, 0, 3, 0x80]);
        assert_eq!(ack_v5(PUBACK, 0x0102, 0x87), [0x40, 0x03, 0x01, 0x02, 0x87]);
    }

    #[test]
    fn the_connack_names_the_topic_alias_maximum() {
        // v5 CONNACK: flags, code 0, properties: topic alias maximum 10, receive maximum 20.
        let connack = [
            0x20, 0x09, 0x00, 0x00, 0x06, 0x22, 0x00, 0x0a, 0x21, 0x00, 0x14,
        ];
        assert_eq!(connack_topic_alias_max(&connack), 10);
        assert_eq!(connack_topic_alias_max(&[0x20, 0x03, 0x00, 0x00, 0x00]), 0);
        assert_eq!(connack_topic_alias_max(&[0x20, 0x02, 0x00, 0x00]), 0);
    }

    #[test]
    fn feeding_to_a_boundary_stops_at_each_packet_end() {
        let mut b = PacketBoundary::default();
        let bytes = [0xd0, 0x00, 0x30, 0x03, 0x00, 0x01, b't', 0xd0];
        assert_eq!(b.feed_to_boundary(&bytes), 2);
        assert_eq!(b.feed_to_boundary(&bytes[2..]), 5);
        assert!(b.at_boundary());
        assert_eq!(b.feed_to_boundary(&bytes[7..]), 1);
        assert!(!b.at_boundary());
    }
}
