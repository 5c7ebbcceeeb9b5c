//! `mqttgate-load`: the load generator the benchmarks use. It speaks MQTT 3.1.1 or 5 over
//! plain TCP or mutual TLS (rustls on aws-lc-rs) to any broker or TLS terminator, and
//! prints one JSON line of results per run (per stage for `idle`).
//!
//! Modes:
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mqttgate::mqtt::{Connect, Version};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

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

type Dyn = Box<dyn Stream>;
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Dialer {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The TLS version and cipher suite of the first connection, for the report.
    negotiated: OnceLock<String>,
}

impl Dialer {
    fn new(cli: &Cli) -> Result<Dialer, String> {
        let tls = if cli.tls {
            let ca = cli.ca.as_ref().ok_or("--tls needs --ca")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca:?}: {e}"))? {
                roots
                    .add(c.map_err(|e| format!("{ca:?}: {e}"))?)
                    .map_err(|e| e.to_string())?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
            let mut config = match (&cli.cert, &cli.key) {
                (Some(cert), Some(key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .map_err(|e| format!("{cert:?}: {e}"))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("{cert:?}: {e}"))?;
                    let key =
                        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key:?}: {e}"))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| e.to_string())?
                }
                _ => builder.with_no_client_auth(),
            };
            if !cli.resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            let name = ServerName::try_from(cli.sni.clone()).map_err(|e| e.to_string())?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Dialer {
            addr: cli.addr,
            tls,
            negotiated: OnceLock::new(),
        })
    }

    async fn dial(&self) -> std::io::Result<Dyn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                self.negotiated.get_or_init(|| {
                    let c = tls.get_ref().1;
                    let suite = c.negotiated_cipher_suite().map(|s| s.suite());
                    match (c.protocol_version(), suite) {
                        (Some(v), Some(s)) => format!("{v:?} {s:?}"),
                        _ => "unknown".to_string(),
                    }
                });
                Ok(Box::new(tls))
            }
        }
    }
}

// ---- MQTT packets the generator needs ----

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn connect_packet(cli: &Cli, client_id: String) -> Vec<u8> {
    Connect {
        version: if cli.mqtt == 5 {
            Version::V5
        } else {
            Version::V311
        },
        clean_start: true,
        keep_alive: 600,
        properties: Vec::new(),
        client_id,
        will: None,
        username: cli.username.clone(),
        password: None,
    }
    .encode()
    .expect("load-test CONNECT fields are short")
}

fn publish_packet(out: &mut Vec<u8>, v5: bool, topic: &str, qos: u8, id: u16, payload: &[u8]) {
    let props = usize::from(v5);
    let ident = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + ident + props + payload.len();
    out.push(0x30 | (qos << 1));
    put_varint(out, remaining);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

fn subscribe_packet(v5: bool, topic: &str, qos: u8) -> Vec<u8> {
    let mut out = vec![0x82];
    let remaining = 2 + usize::from(v5) + 2 + topic.len() + 1;
    put_varint(&mut out, remaining);
    out.extend_from_slice(&1u16.to_be_bytes());
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.push(qos);
    out
}

/// Reads whole MQTT packets from a stream; the buffer is reused.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// (first byte, header length, total length) of the packet at the front of `b`, if whole.
fn frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 1..5 {
        let byte = *b.get(i)?;
        len += (byte & 0x7f) as usize * mult;
        mult *= 128;
        if byte & 0x80 == 0 {
            let total = i + 1 + len;
            return (b.len() >= total).then_some((b[0], i + 1, total));
        }
    }
    None
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The next whole packet as (first byte, header length, bytes); reads as needed.
    async fn next<S: AsyncRead + Unpin + ?Sized>(
        &mut self,
        s: &mut S,
    ) -> std::io::Result<(u8, usize, &[u8])> {
        loop {
            if let Some((first, hl, total)) = frame(&self.buf[self.start..self.end]) {
                let p = self.start;
                self.start += total;
                return Ok((first, hl, &self.buf[p..p + total]));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
            let n = s.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }
}

/// Connects and waits for a successful CONNACK.
async fn mqtt_connect(
    cli: &Cli,
    dialer: &Dialer,
    client_id: String,
    reader: &mut Reader,
) -> Result<Dyn, String> {
    let mut s = dialer.dial().await.map_err(|e| format!("dial: {e}"))?;
    s.write_all(&connect_packet(cli, client_id))
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let (first, hl, p) = reader
        .next(&mut s)
        .await
        .map_err(|e| format!("read CONNACK: {e}"))?;
    if first != 0x20 || p.len() < hl + 2 || p[hl + 1] != 0 {
        return Err(format!("refused: {:02x?}", &p[..p.len().min(8)]));
    }
    Ok(s)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn client_id(kind: &str) -> String {
    format!(
        "lg{}-{kind}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- watched processes ----

struct Watched {
    name: String,
    pid: u32,
}

fn parse_pids(specs: &[String]) -> Result<Vec<Watched>, String> {
    specs
        .iter()
        .map(|s| {
            let (name, pid) = s
                .split_once('=')
                .ok_or(format!("--pid {s}: want NAME=PID"))?;
            Ok(Watched {
                name: name.to_string(),
                pid: pid.parse().map_err(|_| format!("--pid {s}: bad pid"))?,
            })
        })
        .collect()
}

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 on every ABI.
const USER_HZ: f64 = 100.0;

/// utime + stime of a process and all its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / USER_HZ
}

fn rss_kib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return f64::NAN;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Pages of memory the kernel charges to TCP sockets (system-wide).
fn tcp_mem_pages() -> f64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|x| *x == "mem")
                    .and_then(|i| f.get(i + 1))
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(f64::NAN)
}

fn cpu_snapshot(w: &[Watched]) -> Vec<f64> {
    w.iter().map(|p| cpu_seconds(p.pid)).collect()
}

fn cpu_delta(w: &[Watched], before: &[f64]) -> Value {
    let now = cpu_snapshot(w);
    let mut m = serde_json::Map::new();
    for (i, p) in w.iter().enumerate() {
        m.insert(p.name.clone(), json!(now[i] - before[i]));
    }
    Value::Object(m)
}

fn self_cpu() -> f64 {
    cpu_seconds(std::process::id())
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

// ---- modes ----

async fn storm(cli: Arc<Cli>, concurrency: usize, max: u64) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let ok = Arc::new(AtomicU64::new(0));
    let started_count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::<String>::new());
    let before = cpu_snapshot(&watched);
    let self_before = self_cpu();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.duration);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (cli, dialer, ok, errors, first_error, started_count) = (
            cli.clone(),
            dialer.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
            started_count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut reader = Reader::new();
            while Instant::now() < deadline && started_count.fetch_add(1, Ordering::Relaxed) < max {
                let t = Instant::now();
                let r = timeout(Duration::from_secs(10), async {
                    reader.start = 0;
                    reader.end = 0;
                    let mut s = mqtt_connect(&cli, &dialer, client_id("s"), &mut reader).await?;
                    s.write_all(&[0xe0, 0x00])
                        .await
                        .map_err(|e| format!("DISCONNECT: {e}"))?;
                    let _ = s.shutdown().await;
                    Ok::<_, String>(())
                })
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let _ = first_error.set(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&watched, &before);
    lat.sort_unstable();
    let n = ok.load(Ordering::Relaxed);
    json!({
        "mode": "storm",
        "negotiated": dialer.negotiated.get(),
        "connections": n,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error.get(),
        "seconds": elapsed,
        "conn_per_s": n as f64 / elapsed,
        "connect_ms_p50": percentile(&lat, 0.5).map(|v| v / 1000.0),
        "connect_ms_p99": percentile(&lat, 0.99).map(|v| v / 1000.0),
        "cpu_s": cpu,
        "loadgen_cpu_s": self_cpu() - self_before,
    })
}

/// TcpExt ListenOverflows from /proc/net/netstat (system-wide): SYNs or ACKs dropped
/// because an accept queue was full.
fn listen_overflows() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return f64::NAN;
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return f64::NAN;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn reconnect(cli: Arc<Cli>, clients: usize, limit: f64) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let retries = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::<String>::new());
    // Every client waits for one signal, so the connects leave together.
    let go = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (cli, dialer, retries, first_error, go, ready) = (
            cli.clone(),
            dialer.clone(),
            retries.clone(),
            first_error.clone(),
            go.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let notified = go.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ready.wait().await;
            notified.await;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(limit);
            let id = client_id("r");
            let mut reader = Reader::new();
            let mut attempt = 0u32;
            loop {
                reader.start = 0;
                reader.end = 0;
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left, mqtt_connect(&cli, &dialer, id.clone(), &mut reader)).await {
                    // Held open until the run ends, as a reconnected client stays.
                    Ok(Ok(s)) => return Some((start.elapsed(), s)),
                    Ok(Err(e)) => {
                        let _ = first_error.set(e);
                    }
                    Err(_) => return None,
                }
                retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                // Like a client library's reconnect delay: short, growing, capped.
                let pause = Duration::from_millis((100 * u64::from(attempt)).min(1000));
                if Instant::now() + pause >= deadline {
                    return None;
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    ready.wait().await;
    let before = cpu_snapshot(&watched);
    let overflows_before = listen_overflows();
    let start = Instant::now();
    go.notify_waiters();
    let mut admitted = Vec::with_capacity(clients);
    let mut held = Vec::with_capacity(clients);
    for t in tasks {
        if let Ok(Some((took, s))) = t.await {
            admitted.push(took.as_nanos() as u64 / 1000);
            held.push(s);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&watched, &before);
    admitted.sort_unstable();
    let all = admitted.len() == clients;
    let out = json!({
        "mode": "reconnect",
        "negotiated": dialer.negotiated.get(),
        "clients": clients,
        "admitted": admitted.len(),
        "all_admitted_s": if all { admitted.last().map(|us| *us as f64 / 1e6) } else { None },
        "admitted_ms_p50": percentile(&admitted, 0.5),
        "admitted_ms_p99": percentile(&admitted, 0.99),
        "retries": retries.load(Ordering::Relaxed),
        "first_error": first_error.get(),
        "listen_overflows": listen_overflows() - overflows_before,
        "seconds": elapsed,
        "cpu_s": cpu,
    });
    drop(held);
    out
}

async fn idle(
    cli: Arc<Cli>,
    counts: Vec<usize>,
    concurrency: usize,
    settle_ms: u64,
    stage_timeout: f64,
) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let mut held: Vec<Dyn> = Vec::new();
    let mut stages = Vec::new();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let rss = |w: &[Watched]| -> Value {
        let mut m = serde_json::Map::new();
        for p in w {
            m.insert(p.name.clone(), json!(rss_kib(p.pid)));
        }
        Value::Object(m)
    };
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    stages.push(
        json!({"connections": 0, "rss_kib": rss(&watched), "tcp_mem_pages": tcp_mem_pages()}),
    );
    for target in counts {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(stage_timeout);
        while held.len() < target && Instant::now() < deadline && errors < 1000 {
            let batch = (target - held.len()).min(concurrency.max(1));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (cli, dialer) = (cli.clone(), dialer.clone());
                set.spawn(async move {
                    let mut reader = Reader::new();
                    timeout(
                        Duration::from_secs(10),
                        mqtt_connect(&cli, &dialer, client_id("i"), &mut reader),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()))
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(s)) => held.push(s),
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        let open_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        stages.push(json!({
            "connections": held.len(),
            "open_seconds": open_s,
            "rss_kib": rss(&watched),
            "tcp_mem_pages": tcp_mem_pages(),
        }));
    }
    let out = json!({
        "mode": "idle",
        "stages": stages,
        "errors": errors,
        "first_error": first_error,
    });
    // Close without waiting on each peer: dropping sends FIN.
    drop(held);
    out
}

/// Closed-loop accounting for unbounded publishing.
#[derive(Default)]
struct Flow {
    published: AtomicU64,
    delivered: AtomicU64,
    forgiven: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Flow {
    fn outstanding(&self) -> u64 {
        let done = self.delivered.load(Ordering::Relaxed) + self.forgiven.load(Ordering::Relaxed);
        self.published.load(Ordering::Relaxed).saturating_sub(done)
    }

    fn forgive(&self) {
        self.forgiven
            .fetch_add(self.outstanding(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct SubStats {
    received: u64,
    lat_ns: Vec<u64>,
}

const LAT_CAP: usize = 2_000_000;

#[allow(clippy::too_many_arguments)]
async fn pubsub(
    cli: Arc<Cli>,
    publishers: usize,
    subscribers: usize,
    qos: u8,
    size: usize,
    rate: f64,
    batch: usize,
    inflight: usize,
    topic_prefix: String,
    window: u64,
    warmup_ms: u64,
) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let v5 = cli.mqtt == 5;
    let size = size.max(8);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Messages stamped at or after this (ns since epoch) are counted; u64::MAX: not yet.
    let window_start = Arc::new(AtomicU64::new(u64::MAX));
    let window_end = Arc::new(AtomicU64::new(u64::MAX));
    let subscribers = subscribers.max(1);
    let flow = Arc::new(Flow::default());

    // Subscribers first, each on its own topic; publishers spread over the topics.
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut reader = Reader::new();
        let mut s = mqtt_connect(&cli, &dialer, client_id("sub"), &mut reader)
            .await
            .unwrap_or_else(|e| fail(&format!("subscriber: {e}")));
        let topic = format!("{topic_prefix}/{}/t{i}", std::process::id());
        s.write_all(&subscribe_packet(v5, &topic, qos))
            .await
            .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
        let (first, _, _) = reader
            .next(&mut s)
            .await
            .unwrap_or_else(|e| fail(&format!("suback: {e}")));
        if first != 0x90 {
            fail(&format!("expected SUBACK, got {first:#x}"));
        }
        let (stop, ws, we, flow) = (
            stop.clone(),
            window_start.clone(),
            window_end.clone(),
            flow.clone(),
        );
        subs.push(tokio::spawn(async move {
            let mut st = SubStats::default();
            let mut acks: Vec<u8> = Vec::new();
            loop {
                let r = timeout(Duration::from_millis(200), reader.next(&mut s)).await;
                let (first, hl, p) = match r {
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => continue,
                    Ok(Err(_)) => break,
                    Ok(Ok(x)) => x,
                };
                if first >> 4 != 3 {
                    continue;
                }
                let pq = (first >> 1) & 3;
                let tl = u16::from_be_bytes([p[hl], p[hl + 1]]) as usize;
                let mut at = hl + 2 + tl;
                if pq > 0 {
                    acks.extend_from_slice(&[0x40, 0x02, p[at], p[at + 1]]);
                    at += 2;
                }
                if v5 {
                    at += 1 + p[at] as usize; // property length (small: one byte)
                }
                let now = epoch.elapsed().as_nanos() as u64;
                flow.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = p.get(at..at + 8) {
                    let sent = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
                    if sent >= ws.load(Ordering::Relaxed) && sent < we.load(Ordering::Relaxed) {
                        st.received += 1;
                        if st.lat_ns.len() < LAT_CAP {
                            st.lat_ns.push(now.saturating_sub(sent));
                        }
                    }
                }
                if reader.start == reader.end {
                    flow.wake.notify_waiters();
                }
                // Acknowledge when nothing more is buffered, so acks go out in batches.
                if !acks.is_empty() && reader.start == reader.end {
                    if s.write_all(&acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
            }
            st
        }));
    }

    let sent = Arc::new(AtomicU64::new(0));
    let pub_errors = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    let per_pub = rate / publishers.max(1) as f64;
    for i in 0..publishers {
        let mut reader = Reader::new();
        let s = mqtt_connect(&cli, &dialer, client_id("pub"), &mut reader)
            .await
            .unwrap_or_else(|e| fail(&format!("publisher: {e}")));
        let topic = format!("{topic_prefix}/{}/t{}", std::process::id(), i % subscribers);
        let (stop, sent, pub_errors, ws, we, flow) = (
            stop.clone(),
            sent.clone(),
            pub_errors.clone(),
            window_start.clone(),
            window_end.clone(),
            flow.clone(),
        );
        pubs.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(s);
            let acked = Arc::new(AtomicU64::new(0));
            let notify = Arc::new(tokio::sync::Notify::new());
            let (acked2, notify2, stop2) = (acked.clone(), notify.clone(), stop.clone());
            // Drains what the broker sends a publisher (PUBACKs for QoS 1).
            let drain = tokio::spawn(async move {
                while !stop2.load(Ordering::Relaxed) {
                    match timeout(Duration::from_millis(200), reader.next(&mut rd)).await {
                        Ok(Ok((first, _, _))) => {
                            if first >> 4 == 4 {
                                acked2.fetch_add(1, Ordering::Relaxed);
                                notify2.notify_one();
                            }
                        }
                        Ok(Err(_)) => break,
                        Err(_) => {}
                    }
                }
            });
            let mut payload = vec![0x5au8; size];
            let mut out = Vec::with_capacity(batch.max(1) * (size + 64));
            let mut id: u16 = 0;
            let mut my_sent = 0u64;
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                let n = if per_pub > 0.0 {
                    tick.tick().await;
                    let due = (t0.elapsed().as_secs_f64() * per_pub) as u64;
                    due.saturating_sub(my_sent).min(10_000) as usize
                } else {
                    // Closed loop: wait while the window is full. A message the broker
                    // dropped would hold the window forever, so a stall of 50 ms forgives
                    // what is outstanding.
                    let b = batch.max(1) as u64;
                    let mut progress = (flow.delivered.load(Ordering::Relaxed), Instant::now());
                    while flow.outstanding() + b > window {
                        let _ = timeout(Duration::from_millis(1), flow.wake.notified()).await;
                        let d = flow.delivered.load(Ordering::Relaxed);
                        if d != progress.0 {
                            progress = (d, Instant::now());
                        } else if progress.1.elapsed() > Duration::from_millis(50) {
                            flow.forgive();
                            break;
                        }
                    }
                    flow.published.fetch_add(b, Ordering::Relaxed);
                    b as usize
                };
                out.clear();
                let mut k = 0;
                while k < n {
                    if qos > 0 {
                        let outstanding = my_sent + k as u64 - acked.load(Ordering::Relaxed);
                        if outstanding >= inflight as u64 {
                            break;
                        }
                    }
                    id = id.wrapping_add(1).max(1);
                    let now = epoch.elapsed().as_nanos() as u64;
                    payload[..8].copy_from_slice(&now.to_be_bytes());
                    publish_packet(&mut out, v5, &topic, qos, id, &payload);
                    k += 1;
                    if now >= ws.load(Ordering::Relaxed) && now < we.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if k == 0 {
                    // Window full: wait for an acknowledgement (bounded).
                    let _ = timeout(Duration::from_millis(50), notify.notified()).await;
                    continue;
                }
                my_sent += k as u64;
                if wr.write_all(&out).await.is_err() {
                    pub_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if per_pub <= 0.0 {
                    tokio::task::yield_now().await;
                }
            }
            let _ = wr.write_all(&[0xe0, 0x00]).await;
            let _ = wr.shutdown().await;
            let _ = timeout(Duration::from_millis(500), drain).await;
        }));
    }

    tokio::time::sleep(Duration::from_millis(warmup_ms)).await;
    let before = cpu_snapshot(&watched);
    let self_before = self_cpu();
    window_start.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
    window_end.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    // Messages sent inside the window may still be on their way: give them a moment, but
    // charge the CPU of the window only.
    let cpu = cpu_delta(&watched, &before);
    let loadgen_cpu = self_cpu() - self_before;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        let _ = timeout(Duration::from_secs(3), p).await;
    }
    let mut received = 0;
    let mut lat = Vec::new();
    for s in subs {
        if let Ok(Ok(st)) = timeout(Duration::from_secs(3), s).await {
            received += st.received;
            lat.extend(st.lat_ns);
        }
    }
    lat.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    json!({
        "mode": "pubsub",
        "publishers": publishers,
        "subscribers": subscribers,
        "qos": qos,
        "size": size,
        "rate": rate,
        "seconds": window,
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received),
        "msgs_per_s": received as f64 / window,
        "bytes_per_s": received as f64 * size as f64 / window,
        "lat_us_p50": percentile(&lat, 0.5),
        "lat_us_p90": percentile(&lat, 0.9),
        "lat_us_p99": percentile(&lat, 0.99),
        "lat_us_max": lat.last().map(|v| *v as f64 / 1000.0),
        "publish_errors": pub_errors.load(Ordering::Relaxed),
        "cpu_s": cpu,
        "loadgen_cpu_s": loadgen_cpu,
    })
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
