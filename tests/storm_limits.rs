//! Ready for a reconnect storm: the listen backlog the kernel really uses, and the
//! open-files limit the process really has, read from outside (`ss`, /proc).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number")
}

/// The accept-queue size of the socket listening on `addr`: `ss` shows it as Send-Q.
fn listen_backlog(addr: SocketAddr) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("run ss (package iproute2; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("no LISTEN socket on {addr} in: {text}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
}

async fn env(extra: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("dev-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = extra.into();
    Env::start(pki, setup).await
}

#[tokio::test]
async fn listen_backlog_defaults_to_4096_capped_by_somaxconn() {
    let env = env("").await;
    assert_eq!(listen_backlog(env.addr()), 4096.min(somaxconn()));
}

#[tokio::test]
async fn configured_listen_backlog_reaches_the_kernel() {
    let env = env("[limits]\nlisten_backlog = 1000\n").await;
    assert_eq!(listen_backlog(env.addr()), 1000.min(somaxconn()));
}

/// The binary under `prlimit --nofile=SOFT:HARD`, on `config`; returns once it listens.
fn spawn_limited(
    env: &Env,
    name: &str,
    nofile: &str,
    edit: impl Fn(String) -> String,
) -> (Child, std::path::PathBuf) {
    let (port, admin) = (free_port(), free_port());
    let config_file = env.config_on_ports(name, port, admin, edit);
    let log = env.path(&format!("{name}.log"));
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg(env!("CARGO_BIN_EXE_mqttgate"))
        .args(["run", "--config"])
        .arg(&config_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run prlimit (package util-linux)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mqttgate did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, log)
}

/// (soft, hard) "Max open files" of a running process.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test]
async fn soft_open_files_limit_is_raised_to_the_hard_limit() {
    let env = env("[limits]\nmax_connections = 1000\n").await;
    let (child, log) = spawn_limited(&env, "raised", "1024:4096", |c| c);
    assert_eq!(open_files_limit(child.id()), ("4096".into(), "4096".into()));
    let text = log_text(&log);
    assert!(
        !text.lines().any(|l| l.contains("WARN")),
        "no warning when it fits: {text}"
    );
    stop(child);
}

#[tokio::test]
async fn max_connections_beyond_the_open_files_limit_is_warned_about() {
    let env = env("[limits]\nmax_connections = 5000\n").await;
    let (child, log) = spawn_limited(&env, "too-many", "1024:4096", |c| c);
    let found = eventually(Duration::from_secs(5), || {
        log_text(&log)
            .lines()
            .any(|l| l.contains("WARN") && l.contains("open files") && l.contains("4096"))
    })
    .await;
    assert!(found, "no warning with the numbers: {}", log_text(&log));
    stop(child);
}

#[tokio::test]
async fn listen_backlog_above_somaxconn_is_warned_about() {
    let max = somaxconn();
    let env = env("").await;
    let (child, log) = spawn_limited(&env, "capped", "4096:4096", |c| {
        c.replace(
            "[admin]\n",
            &format!("[limits]\nlisten_backlog = {}\n\n[admin]\n", max + 1),
        )
    });
    let found = eventually(Duration::from_secs(5), || {
        log_text(&log).lines().any(|l| {
            l.contains("WARN")
                && l.contains("somaxconn")
                && l.contains(&max.to_string())
                && l.contains(&(max + 1).to_string())
        })
    })
    .await;
    assert!(found, "no warning naming both numbers: {}", log_text(&log));
    stop(child);
}

#[tokio::test]
async fn check_prints_the_backlog_and_whether_max_connections_fits() {
    let env = env("[limits]\nmax_connections = 5000\nlisten_backlog = 1000\n").await;
    let out = Command::new("prlimit")
        .arg("--nofile=1024:4096")
        .arg(env!("CARGO_BIN_EXE_mqttgate"))
        .args(["check", "--config"])
        .arg(&env.config_file)
        .output()
        .unwrap();
    let out = text(&out);
    let want_backlog = format!("listen backlog here: {}", 1000.min(somaxconn()));
    assert!(out.contains(&want_backlog), "{out}");
    assert!(
        out.contains("open files here: soft 1024, hard 4096")
            && out.contains("max_connections 5000 needs about 11378: does not fit"), // 2 × 5000 sessions + 1250 pending + 64 admin + 64
        "{out}"
    );
}
