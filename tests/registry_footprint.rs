//! What a loaded registry keeps on the heap: a few large blocks whatever the number of
//! clients, and about the bytes its strings need (issue 9, point 1). The RSS figures
//! themselves are in `examples/registry_memory.rs`; this guards the layout they rest on.

// A counting global allocator is an unsafe trait implementation by nature.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use mqttgate::trust::registry::Registry;

/// Counts the blocks and bytes allocated and not yet freed on each thread, so tests running
/// in parallel don't mix. Load and drop happen on the test's thread.
struct Counting;

thread_local! {
    static HELD: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
}

fn count(blocks: isize, bytes: isize) {
    // try_with: the allocator also runs while thread locals are torn down.
    let _ = HELD.try_with(|held| {
        let (b, n) = held.get();
        held.set((b + blocks, n + bytes));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-1, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(0, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Entries in Azure's ARM shape: every scheme, two thumbprints on pinned clients,
/// attributes on two of three, a description on one of four.
fn registry_json(clients: usize) -> String {
    let mut json = String::from(r#"{"value":["#);
    for i in 0..clients {
        if i > 0 {
            json.push(',');
        }
        let (scheme, name) = match i % 6 {
            0 => ("SubjectMatchesAuthenticationName", format!("sensor-{i}")),
            1 => (
                "DnsMatchesAuthenticationName",
                format!("Dev-{i}.plant.example.com"),
            ),
            2 => (
                "UriMatchesAuthenticationName",
                format!("spiffe://plant/{i}"),
            ),
            3 => (
                "IpMatchesAuthenticationName",
                format!("10.0.{}.{}", i >> 8 & 255, i & 255),
            ),
            4 => (
                "EmailMatchesAuthenticationName",
                format!("d{i}@plant.example.com"),
            ),
            _ => ("ThumbprintMatch", format!("gw-{i}")),
        };
        let pins = if scheme == "ThumbprintMatch" {
            format!(
                r#","allowedThumbprints":["{:064x}","{:064x}"]"#,
                2 * i,
                2 * i + 1
            )
        } else {
            String::new()
        };
        let attributes = match i % 3 {
            0 => format!(r#"{{"room":"{}","floor":{}}}"#, i % 500, i % 40),
            1 => r#"{"types":["Fan","Light"],"on":true}"#.to_string(),
            _ => "{}".to_string(),
        };
        let description = if i % 4 == 0 {
            r#""line 3 vibration sensor""#
        } else {
            "null"
        };
        json.push_str(&format!(
            r#"{{"name":"c{i}","id":"/x/c{i}","properties":{{"authenticationName":"{name}","clientCertificateAuthentication":{{"validationScheme":"{scheme}"{pins}}},"state":"Enabled","attributes":{attributes},"description":{description}}}}}"#
        ));
    }
    json.push_str("]}");
    json
}

#[test]
fn a_large_registry_is_a_few_blocks_of_about_its_text_size() {
    let clients = 20_000;
    let json = registry_json(clients);
    let before = HELD.with(Cell::get);
    let registry = Registry::from_json(json.as_bytes(), Path::new("clients.json")).unwrap();
    let loaded = HELD.with(Cell::get);
    assert_eq!(registry.len(), clients);
    let (blocks, bytes) = (loaded.0 - before.0, loaded.1 - before.1);
    // Arenas, records, thumbprints and two tables; not one block per client (each small
    // block costs glibc 8-24 bytes and leaves holes when freed).
    assert!(blocks <= 16, "{blocks} blocks held for {clients} clients");
    // Names, authentication names, descriptions and attributes average ~55 bytes here; a
    // record is 40, thumbprints ~11, the index ~7. It was 310 bytes/client before the arenas.
    let per_client = bytes / clients as isize;
    assert!(
        per_client <= 140,
        "{per_client} bytes per client held ({bytes} for {clients})"
    );
    // Dropped, it gives back every block, so a reload's old generation leaves nothing.
    drop(registry);
    assert_eq!(HELD.with(Cell::get), before);
}
