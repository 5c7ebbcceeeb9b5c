//! `mqttgate-load`: the load generator the benchmarks use. It speaks MQTT 3.1.1 or 5 over
//! plain TCP or mutual TLS (rustls on aws-lc-rs) to any broker or TLS terminator, and
//! prints one JSON line of results per run (per stage for `idle`).
//!
//! Modes:
//! `--ws /mqtt` speaks MQTT over WebSockets (the upgrade, then binary frames).
//!
//! - `storm`: open connections as fast as allowed (TCP, handshake, CONNECT, CONNACK,
//!   DISCONNECT, close) with `--concurrency` workers for `--duration` seconds.
//! - `idle`: open `--counts` authenticated connections in stages and hold them, reading
//!   the watched processes' resident memory after each stage.
//! - `reconnect`: `--clients` clients connect at the same instant, as a fleet does after a
//!   restart, each retrying (with a short growing backoff) until its CONNACK 0x00; reports
//!   the time until all are admitted and the kernel's accept-queue overflows meanwhile.
//! - `pubsub`: subscribers and publishers at a fixed (`--rate`) or unbounded rate, QoS 0 or
//!   1, `--size`-byte payloads that carry the send time, so end-to-end latency is measured.
//!
//! `--pid NAME=PID` (repeatable) makes every mode report the CPU seconds (utime + stime
//! from /proc/PID/stat) that process spent inside the measured window, and its VmRSS.
//! Every loop is bounded by a count and a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

mod dial;
mod modes;
mod packets;
mod watch;
mod ws;

use dial::*;
use modes::*;
use packets::*;
use watch::*;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mqttgate-load",
    about = "MQTT load generator (plain TCP or mutual TLS)"
)]
struct Cli {
    /// Broker or terminator address (loopback in the benchmarks).
    #[arg(long, default_value = "127.0.0.1:1883", global = true)]
    addr: SocketAddr,
    /// Speak TLS; needs --ca, and --cert/--key for mutual TLS.
    #[arg(long, global = true)]
    tls: bool,
    /// CA certificate (PEM) that verifies the server.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Server name to send and verify.
    #[arg(long, default_value = "localhost", global = true)]
    sni: String,
    /// Authenticate with this JWT (MQTT 5 Authentication Method CUSTOM-JWT) instead of a
    /// client certificate; implies --mqtt 5.
    #[arg(long, global = true)]
    jwt: Option<PathBuf>,
    /// MQTT over WebSockets on this path (after TLS when --tls): `--ws /mqtt`.
    #[arg(long, global = true)]
    ws: Option<String>,
    /// Allow TLS session resumption (off by default: every handshake is a full one).
    #[arg(long, global = true)]
    resume: bool,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, global = true)]
    mqtt: u8,
    /// Username to send in CONNECT (none by default: terminators take the identity from
    /// the certificate).
    #[arg(long, global = true)]
    username: Option<String>,
    /// Measured time in seconds.
    #[arg(long, default_value_t = 3.0, global = true)]
    duration: f64,
    /// Processes to watch: NAME=PID (CPU seconds in the window, VmRSS).
    #[arg(long = "pid", global = true)]
    pids: Vec<String>,
    /// Free-form label copied into the JSON output.
    #[arg(long, default_value = "", global = true)]
    label: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug, Clone)]
enum Mode {
    /// Connect, CONNACK, DISCONNECT, close, as fast as allowed.
    Storm {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Stop after this many connections even before --duration.
        #[arg(long, default_value_t = 1_000_000)]
        max: u64,
    },
    /// Hold idle authenticated connections, in stages.
    Idle {
        /// Cumulative connection counts, e.g. 1000,8000.
        #[arg(long, value_delimiter = ',', default_value = "1000,8000")]
        counts: Vec<usize>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Wait after each stage before reading memory, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// Give up opening a stage after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        stage_timeout: f64,
    },
    /// All clients connect at once and retry until admitted; time until the last one is.
    Reconnect {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Publishers and subscribers; end-to-end throughput and latency.
    Pubsub {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 4)]
        subscribers: usize,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Payload bytes (at least 8: the send time).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Total messages per second over all publishers; 0 = unbounded.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Messages per write when unbounded.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// QoS 1 messages a publisher may have unacknowledged.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
        /// Topics are `PREFIX/<pid>/t<n>` (brokers with ACLs need a prefix the identity may use).
        #[arg(long, default_value = "bench")]
        topic_prefix: String,
        /// Unbounded mode: messages published but not yet delivered, over all publishers.
        /// Keeps the test closed-loop, so it measures capacity instead of queue growth.
        #[arg(long, default_value_t = 1024)]
        window: u64,
        /// Publishing before the measured window starts, in milliseconds.
        #[arg(long, default_value_t = 300)]
        warmup_ms: u64,
    },
}

fn fail(msg: &str) -> ! {
    eprintln!("mqttgate-load: {msg}");
    println!("{}", json!({"error": msg}));
    std::process::exit(1)
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cli = Arc::new(cli);
    let mut out = rt.block_on(async {
        match cli.mode.clone() {
            Mode::Storm { concurrency, max } => storm(cli.clone(), concurrency, max).await,
            Mode::Reconnect { clients, timeout } => reconnect(cli.clone(), clients, timeout).await,
            Mode::Idle {
                counts,
                concurrency,
                settle_ms,
                stage_timeout,
            } => idle(cli.clone(), counts, concurrency, settle_ms, stage_timeout).await,
            Mode::Pubsub {
                publishers,
                subscribers,
                qos,
                size,
                rate,
                batch,
                inflight,
                topic_prefix,
                window,
                warmup_ms,
            } => {
                pubsub(
                    cli.clone(),
                    publishers,
                    subscribers,
                    qos,
                    size,
                    rate,
                    batch,
                    inflight,
                    topic_prefix,
                    window,
                    warmup_ms,
                )
                .await
            }
        }
    });
    out["label"] = json!(cli.label);
    out["tls"] = json!(cli.tls);
    out["addr"] = json!(cli.addr.to_string());
    println!("{out}");
    rt.shutdown_timeout(Duration::from_secs(2));
}
