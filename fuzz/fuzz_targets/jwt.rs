//! Any bytes as a JWT: the token as it came (the header is read before any key is chosen),
//! and, split at the first 0xff, a header and claims signed with the fuzzer's own key so
//! the claims checks are reached. Never a panic; accepted claims are what the token said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::fuzzing::{jwt_raw, jwt_signed};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let _ = jwt_raw(data, NOW);
    let (header, claims) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&br#"{"alg":"HS256"}"#[..], data),
    };
    let (token, verified) = jwt_signed(header, claims, NOW);
    if let Ok(claims) = verified {
        assert!(!claims.sub.is_empty());
        assert!(NOW < claims.exp.saturating_add(60));
        // The same token verifies the same way twice (no hidden state).
        assert_eq!(jwt_raw(&token, NOW), Ok(claims));
    }
});
