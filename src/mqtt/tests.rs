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
    /// The tracker's one-step path for whole headers and its byte-at-a-time path agree:
    /// packets of every remaining-length size, fed whole or in random chunks.
    #[test]
    fn packet_boundaries_do_not_depend_on_how_the_stream_is_cut(
        packets in prop::collection::vec((any::<u8>(), 0usize..20_000), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let packets: Vec<Vec<u8>> = packets
            .iter()
            .map(|&(first, len)| packet(first, &vec![0xe0; len]))
            .collect();
        let (stream, ends) = stream_of(&packets);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        check_boundaries(&stream, &ends, &cuts);
        let mut whole = PacketBoundary::default();
        whole.feed(&stream);
        prop_assert!(whole.at_boundary());
        prop_assert_eq!(whole.ends_after_disconnect(), packets.last().unwrap()[0] >> 4 == 14);
    }

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
