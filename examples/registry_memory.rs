//! Memory and time of a large registry, for `scripts/bench.sh registry`: generates a
//! 100,000-client registry (every scheme, attributes, descriptions, Azure's extra fields),
//! loads it with `Registry::load` as `Trust::load` does, then reloads it 10 times the way
//! `Server::reload` does (on another thread each time, the new value published and the old
//! one dropped), and prints the figures with their targets (issue 9, point 1), PASS or
//! MISS each; exits 1 when a target is missed. It sets the allocator up as `main` does.
//!
//! Usage: `registry_memory [CLIENTS]` (default 100000). Linux only (reads /proc).

// A counting global allocator is an unsafe trait implementation by nature.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqttgate::trust::registry::Registry;

/// Counts the bytes the program asked for and has not freed: the live data, without the
/// allocator's own overhead and free lists (which RSS includes).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: f64 = 1024.0 * 1024.0;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Samples RSS every millisecond while `f` runs; the highest value seen.
fn peak_rss_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(rss()));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let out = f();
    peak.fetch_max(rss(), Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(Ordering::Relaxed))
}

fn hex64(i: usize, salt: u64) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (0..4)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("{x:016x}")
        })
        .collect()
}

/// One entry in the ARM shape Azure returns, varied by `i`.
fn entry(i: usize) -> String {
    let schemes = [
        ("SubjectMatchesAuthenticationName", format!("sensor-{i}")),
        (
            "DnsMatchesAuthenticationName",
            format!("Dev-{i}.plant.example.com"),
        ),
        (
            "UriMatchesAuthenticationName",
            format!("spiffe://plant/{i}"),
        ),
        (
            "IpMatchesAuthenticationName",
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        ),
        (
            "EmailMatchesAuthenticationName",
            format!("d{i}@plant.example.com"),
        ),
        ("ThumbprintMatch", format!("gw-{i}")),
    ];
    let (scheme, name) = &schemes[i % schemes.len()];
    let thumbprints = if *scheme == "ThumbprintMatch" {
        format!(
            r#","allowedThumbprints":["{}","{}"]"#,
            hex64(i, 1),
            hex64(i, 2)
        )
    } else {
        String::new()
    };
    let attributes = match i % 3 {
        0 => format!(r#"{{"room":"{}","floor":{}}}"#, i % 500, i % 40),
        1 => format!(r#"{{"types":["Fan","Light"],"on":true,"line":{}}}"#, i % 9),
        _ => "{}".to_string(),
    };
    let description = if i.is_multiple_of(4) {
        format!(r#""line {} vibration sensor""#, i % 12)
    } else {
        "null".to_string()
    };
    let state = if i.is_multiple_of(50) {
        "Disabled"
    } else {
        "Enabled"
    };
    format!(
        r#"{{"name":"c{i}","type":"Microsoft.EventGrid/namespaces/clients","properties":{{"authenticationName":"{name}","clientCertificateAuthentication":{{"validationScheme":"{scheme}"{thumbprints}}},"state":"{state}","attributes":{attributes},"description":{description}}}}}"#
    )
}

fn main() {
    // As the server does first thing, so this measures what it does.
    mqttgate::trust::memory::configure_allocator();
    let clients: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("CLIENTS is a number"))
        .unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("registry-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("clients.json");
    {
        let mut json = String::with_capacity(clients * 256);
        json.push_str(r#"{"value":["#);
        for i in 0..clients {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&entry(i));
        }
        json.push_str("]}");
        std::fs::write(&file, json).unwrap();
    }
    let file_size = std::fs::metadata(&file).unwrap().len() as f64;

    let base_rss = rss();
    let base_live = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let first = load(&file);
    let load_time = started.elapsed();
    assert_eq!(first.len(), clients);
    let live = LIVE.load(Ordering::Relaxed) - base_live;
    let at_rest = rss();

    // What `Server::reload` does: a new value built on whichever thread runs the reload,
    // published in place of the old one, which is dropped there.
    let published = Arc::new(Mutex::new(Arc::new(first)));
    let reload = || {
        let published = published.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            let new = Arc::new(load(&file));
            let old = std::mem::replace(&mut *published.lock().unwrap(), new);
            drop(old);
        })
        .join()
        .unwrap();
    };
    let mut peak = 0;
    let mut after = Vec::new();
    for _ in 0..10 {
        let ((), p) = peak_rss_during(reload);
        peak = peak.max(p);
        after.push(rss());
    }
    let live_after = LIVE.load(Ordering::Relaxed) - base_live;
    std::fs::remove_dir_all(&dir).ok();

    let mib = |b: usize| b as f64 / MIB;
    let ratio = |b: usize| b as f64 / live as f64;
    let mut missed = 0;
    let mut verdict = |ok: bool| {
        if ok {
            "PASS"
        } else {
            missed += 1;
            "MISS"
        }
    };
    println!(
        "registry: {clients} clients, file {:.1} MiB",
        file_size / MIB
    );
    println!(
        "live data (heap bytes held by the registry): {:.1} MiB ({:.0} B/client; {:.1} MiB after 10 reloads)",
        mib(live),
        live as f64 / clients as f64,
        mib(live_after)
    );
    println!("RSS before load: {:.1} MiB", mib(base_rss));
    let rest_ratio = ratio(at_rest);
    println!(
        "RSS at rest after load: {:.1} MiB = {rest_ratio:.2}x live (target <= 1.5x: {})",
        mib(at_rest),
        verdict(rest_ratio <= 1.5)
    );
    let peak_ratio = ratio(peak);
    println!(
        "peak RSS during a reload: {:.1} MiB = {peak_ratio:.2}x live (target <= 2.5x: {})",
        mib(peak),
        verdict(peak_ratio <= 2.5)
    );
    let growth = after[9] as f64 / after[0] as f64;
    println!(
        "RSS after reload 1: {:.1} MiB, after reload 10: {:.1} MiB = {growth:.2}x (target <= 1.10x: {})",
        mib(after[0]),
        mib(after[9]),
        verdict(growth <= 1.10)
    );
    let load_ms = load_time.as_secs_f64() * 1000.0;
    println!(
        "load time: {load_ms:.0} ms = {:.2}x target (target <= 1000 ms: {})",
        load_ms / 1000.0,
        verdict(load_time <= Duration::from_secs(1))
    );
    println!("targets: {} of 4 met", 4 - missed);
    // A script (or a reviewer's loop) can tell a regression from the exit status.
    if missed > 0 {
        std::process::exit(1);
    }
}

fn load(file: &Path) -> Registry {
    Registry::load(file, mqttgate::trust::registry::DEFAULT_MAX_BYTES)
        .expect("generated registry loads")
}
