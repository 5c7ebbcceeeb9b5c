//! Any bytes as the PROXY v2 header a load balancer sends before TLS: `header_len` and
//! `parse` never panic and agree, and an address they read comes back through `encode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttgate::transport::proxy::{encode, header_len, parse, Header};

/// What the connection path allows (`MAX_PROXY_HEADER`).
const MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let len = header_len(data, MAX);
    match parse(data, MAX) {
        Ok(Some((header, used))) => {
            assert!(used <= data.len() && used <= MAX);
            assert_eq!(len, Ok(Some(used)));
            // The same header with anything after it reads the same.
            assert_eq!(parse(&data[..used], MAX), Ok(Some((header, used))));
            if let Header::Proxied {
                source,
                destination,
            } = header
            {
                let again = encode(source, destination, Some("cn"));
                let (read, n) = parse(&again, again.len()).unwrap().unwrap();
                assert_eq!(n, again.len());
                // Mixed families are sent as IPv6: compare what a client is known by.
                let Header::Proxied { source: s2, .. } = read else {
                    panic!("encoded a proxied header, read {read:?}");
                };
                assert_eq!(s2.port(), source.port());
            }
        }
        Ok(None) => {
            assert!(matches!(len, Ok(None)) || matches!(len, Ok(Some(n)) if n > data.len()))
        }
        Err(_) => {}
    }
});
