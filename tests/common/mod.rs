//! The integration-test harness: a PKI generated per test, a real Mosquitto on an ephemeral
//! loopback port, mqttgate started in-process in front of it, and the clients that talk to
//! it (mosquitto_pub/mosquitto_sub, paho-mqtt, and a byte-level Rust client).
//!
//! Split by concern: `broker` (Mosquitto and stand-in brokers), `wire` (MQTT packets built
//! and read byte by byte), `gate` (the PKI, mqttgate in-process, its clients and the
//! assertions on what they saw), `binary` (the real mqttgate executable), `jwt` (issuer
//! keys, PyJWT tokens and clients without a certificate), `hook` (a real HTTPS
//! authentication webhook). This file holds
//! the few helpers all of them share.
//!
//! Mosquitto and its clients are found on PATH or /usr/sbin; when absent and we are root,
//! they are installed with apt-get. A test never skips for lack of them: it fails.
#![allow(dead_code)]

mod binary;
mod broker;
mod gate;
mod hook;
mod jwt;
mod wire;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use {binary::*, broker::*, gate::*, hook::*, jwt::*, wire::*};

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A free loopback port. Mosquitto can't be told to pick one itself, so the harness picks
/// it and retries the start if another test took it first.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Polls `f` until it returns true or `wait` passes.
pub async fn eventually<F: FnMut() -> bool>(wait: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// `n` random bytes (from aws-lc-rs, already a dependency).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("random bytes");
    buf
}
