//! Any bytes as the authentication webhook's answer body: read strictly, never a panic,
//! and an allow always becomes an identity or a denial.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::auth::webhook::{decide, Answer};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let answer = Answer::parse(data, NOW);
    let _ = (answer.label(), answer.cache_until());
    if let Answer::Allow { name, .. } = &answer {
        assert!(!name.is_empty());
        if let Ok(identity) = decide(&answer, NOW) {
            assert_eq!(&identity.authentication_name, name);
        }
    }
});
