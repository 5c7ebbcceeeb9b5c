//! Any bytes as the registry file (Azure's client resources): loading never panics, and
//! every client it keeps can be found again by its authentication name.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mqttgate::trust::registry::Registry;

fuzz_target!(|data: &[u8]| {
    if let Ok(registry) = Registry::from_json(data, Path::new("clients.json")) {
        assert_eq!(registry.clients().iter().count(), registry.len());
        for client in registry.clients().iter() {
            let found = registry
                .get(client.authentication_name)
                .expect("a loaded client is found by its name");
            assert_eq!(found.name, client.name);
            for (key, value) in client.attributes.iter() {
                assert_eq!(client.attributes.get(key), Some(value));
            }
        }
    }
});
