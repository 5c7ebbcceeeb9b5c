//! Any bytes as the HTTP/1.1 upgrade request on the WebSocket listener: the parser never
//! panics, an accepted request is exactly its first `len` bytes, and its answer is
//! well-formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::transport::ws::upgrade::parse;

fuzz_target!(|data: &[u8]| {
    let origins = ["https://app.example.com".to_string()];
    match parse(data, "/mqtt", &origins) {
        Ok(Some(accepted)) => {
            assert!(accepted.len <= data.len());
            let again = parse(&data[..accepted.len], "/mqtt", &origins);
            assert_eq!(again, Ok(Some(accepted)));
            let again = again.unwrap().unwrap();
            let response = again.response();
            assert!(response.starts_with("HTTP/1.1 101 ") && response.ends_with("\r\n\r\n"));
            // Without an allowed origin only a request that sent none is accepted.
            if parse(data, "/mqtt", &[]).is_err() {
                assert!(data.windows(7).any(|w| w.eq_ignore_ascii_case(b"origin:")));
            }
        }
        Ok(None) => {}
        Err(refusal) => {
            let _ = (refusal.label(), refusal.response());
        }
    }
});
