//! Any bytes as a client's packets after its CONNECT (the first byte picks MQTT 3.1.1 or
//! 5): the reader the authorized relay uses never panics, whatever it reads of a
//! SUBSCRIBE re-encodes to the same SUBSCRIBE, and the packet boundary tracker (which sees
//! UNSUBSCRIBE and DISCONNECT go by) follows the stream fed whole or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::mqtt::client_packets::{
    connack_topic_alias_max, encode_subscribe, fixed_header, merge_suback, parse_subscribe,
    publish_head, suback_packet_id, PUBLISH, SUBACK, SUBSCRIBE,
};
use mqttgate::mqtt::{auth, PacketBoundary, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&v, stream)) = data.split_first() else {
        return;
    };
    let version = if v & 1 == 0 {
        Version::V311
    } else {
        Version::V5
    };
    let mut at = 0;
    while at < stream.len() {
        let buf = &stream[at..];
        let Ok(Some(h)) = fixed_header(buf) else {
            break;
        };
        assert!(h.header_len >= 2 && h.header_len <= 5);
        let end = buf.len().min(h.total());
        let body = &buf[h.header_len..end];
        match h.kind() {
            PUBLISH => {
                if let Ok(Some(head)) = publish_head(version, h.first, body, h.body_len) {
                    assert!(head.qos < 3);
                    assert_eq!(head.packet_id.is_some(), head.qos > 0);
                }
            }
            SUBSCRIBE if end == h.total() => {
                if let Ok(sub) = parse_subscribe(version, body) {
                    let encoded = encode_subscribe(&sub, sub.filters.iter().copied());
                    let again = fixed_header(&encoded).unwrap().unwrap();
                    assert_eq!(again.total(), encoded.len());
                    let reread = parse_subscribe(version, &encoded[again.header_len..]).unwrap();
                    assert_eq!(reread, sub);
                }
            }
            SUBACK if end == h.total() => {
                let _ = suback_packet_id(body);
                let codes: Vec<Option<u8>> =
                    body.iter().map(|&b| (b & 1 == 0).then_some(b)).collect();
                let _ = merge_suback(version, body, &codes);
            }
            15 if end == h.total() => {
                let _ = auth::parse(&buf[..end]);
            }
            2 => {
                let _ = connack_topic_alias_max(&buf[..end]);
            }
            _ => {}
        }
        at += h.total();
    }

    let mut whole = PacketBoundary::default();
    whole.feed(stream);
    let mut pieces = PacketBoundary::default();
    for chunk in stream.chunks(usize::from(v >> 1).max(1)) {
        pieces.feed(chunk);
    }
    assert_eq!(whole.at_boundary(), pieces.at_boundary());
    assert_eq!(
        whole.ends_after_disconnect(),
        pieces.ends_after_disconnect()
    );
});
