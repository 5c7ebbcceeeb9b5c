//! Any bytes: the CONNECT parser and its helpers never panic, whatever it accepts re-encodes to the same
//! CONNECT, and the packet boundary tracker follows any stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::mqtt::{packet_len, parse_connect, peek_version, PacketBoundary};

const MAX_LEN: usize = 65536;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((connect, consumed))) = parse_connect(data, MAX_LEN) {
        assert!(consumed <= data.len() && consumed <= MAX_LEN);
        let encoded = connect.encode().expect("a CONNECT that parsed re-encodes");
        assert_eq!(encoded.len(), connect.encoded_len());
        // Only minimal encodings are accepted, so the bytes come back exactly.
        assert_eq!(encoded, data[..consumed]);
        let reparsed = parse_connect(&encoded, MAX_LEN);
        // A complete CONNECT's version is what the timeout path would have peeked.
        assert_eq!(peek_version(data), Some(connect.version));
        assert_eq!(packet_len(data), Ok(Some(consumed)));
        assert_eq!(reparsed, Ok(Some((connect, encoded.len()))));
    }
    // The helpers used on partial input never panic on any prefix.
    let _ = peek_version(data);
    let _ = packet_len(data);

    // The same bytes split in two must give the same answer as in one piece.
    let mut whole = PacketBoundary::default();
    whole.feed(data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut pieces = PacketBoundary::default();
    pieces.feed(&data[..split]);
    pieces.feed(&data[split..]);
    assert_eq!(whole.at_boundary(), pieces.at_boundary());
});
