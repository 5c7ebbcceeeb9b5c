//! SPEC §8, PROXY protocol v2: inbound from a trusted load balancer (a real HAProxy with
//! `send-proxy-v2`), refused from anywhere else or without a header; outbound towards the
//! broker with the client's address and its authentication name as the TLS CN. The broker
//! side here is a byte-level stand-in that reads the header; the Mosquitto 2.1 run is
//! `scripts/interop.sh`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqttgate::config::Config;
use mqttgate::server::Server;
use mqttgate::transport::proxy::{self, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

/// mqttgate with `top` prepended to its config (top-level keys) and, with `upstream_v2`,
/// `[upstream] proxy_protocol = "v2"`.
async fn gate(
    pki: &Pki,
    dir: &std::path::Path,
    clients: &str,
    upstream: String,
    top: &str,
    upstream_v2: bool,
) -> Result<Arc<Server>, String> {
    let mut setup = Setup::new(clients);
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(upstream);
    let file = write_config(dir, pki, &setup, 0);
    let mut text = format!("{top}\n{}", std::fs::read_to_string(&file).unwrap());
    if upstream_v2 {
        text = text.replace("[upstream]\n", "[upstream]\nproxy_protocol = \"v2\"\n");
    }
    std::fs::write(&file, text).unwrap();
    let config = Config::load(&file).map_err(|e| e.to_string())?;
    Server::start(config).await.map_err(|e| e.to_string())
}

/// A broker stand-in for one client: reads the PROXY v2 header, then a whole CONNECT, and
/// answers CONNACK 0. Connections that close without a byte (mqttgate's readiness probes)
/// are skipped.
async fn proxy_broker() -> (String, tokio::task::JoinHandle<(Header, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; proxy::PREFIX_LEN];
            if s.read_exact(&mut buf).await.is_err() {
                continue;
            }
            let len = proxy::header_len(&buf, 1024).unwrap().unwrap();
            buf.resize(len, 0);
            s.read_exact(&mut buf[proxy::PREFIX_LEN..]).await.unwrap();
            let (header, _) = proxy::parse(&buf, 1024).unwrap().unwrap();
            let mut connect = Vec::new();
            while mqttgate::mqtt::parse_connect(&connect, 1 << 20)
                .unwrap()
                .is_none()
            {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before a whole CONNECT");
                connect.extend_from_slice(&chunk[..n]);
            }
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            return (header, buf);
        }
    });
    (addr, task)
}

/// HAProxy from PATH or /usr/sbin (scripts/deps.sh installs it); missing, the test fails.
fn haproxy_binary() -> std::path::PathBuf {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .expect("haproxy is not installed: run scripts/deps.sh (apt-get install haproxy)")
}

/// Runs HAProxy in front of `backend`, adding a PROXY v2 header to every connection.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(backend: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = write(
            dir.path(),
            "haproxy.cfg",
            &format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server gate {backend} send-proxy-v2\n"
            ),
        );
        let child = Command::new(haproxy_binary())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/deps.sh installs it)");
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "haproxy did not listen on {port}");
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the gate has counted one refusal with `reason`.
async fn assert_refused_once(gate: &Arc<Server>, reason: &str) {
    let series =
        format!("mqttgate_connections_closed_total{{outcome=\"refused\",reason=\"{reason}\",transport=\"tls\"}}");
    let g = gate.clone();
    let counted = eventually(Duration::from_secs(3), || {
        metric(&g.metrics.render(), &series) == Some(1.0)
    })
    .await;
    assert!(counted, "{series}\n{}", gate.metrics.render());
}

/// A gate requiring a PROXY header from `trusted`, in front of a recording broker.
async fn proxy_listener(pki: &Pki, dir: &std::path::Path, trusted: &str) -> Arc<Server> {
    let (upstream, _broker) = recording_broker().await;
    gate(
        pki,
        dir,
        &format!("[{}]", chain_client("sensor-1", SUBJECT)),
        upstream,
        &format!("proxy_protocol = \"required\"\ntrusted_proxies = [\"{trusted}\"]"),
        false,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_the_client_address_is_the_one_its_header_carries_and_goes_upstream() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (upstream, broker) = proxy_broker().await;
    let gate = gate(
        &pki,
        dir.path(),
        &format!("[{}]", chain_client("Sensor-1", SUBJECT)),
        upstream,
        "proxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
        true,
    )
    .await
    .unwrap();
    let haproxy = Haproxy::start(gate.local_addr()).await;
    let cert = pki.root.issue(&leaf("Sensor-1")).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", haproxy.port))
        .await
        .unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let mut tls = tls_over(tcp, &pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(4, "c", Some("sensor-1")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await,
        Some(vec![0x20, 2, 0, 0])
    );
    let (header, bytes) = tokio::time::timeout(Duration::from_secs(5), broker)
        .await
        .unwrap()
        .unwrap();
    // The address HAProxy saw (the client's), not HAProxy's own: carried in, sent on.
    match header {
        Header::Proxied { source, .. } => assert_eq!(source, client_addr),
        other => panic!("expected a proxied header, got {other:?}"),
    }
    // The registry's spelling of the authentication name is the CN.
    assert!(bytes.windows(8).any(|w| w == b"Sensor-1"), "{bytes:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_address_is_refused_before_tls() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let gate = proxy_listener(&pki, dir.path(), "10.0.0.0/8").await;
    let mut s = TcpStream::connect(gate.local_addr()).await.unwrap();
    let header = proxy::encode(
        "203.0.113.7:40000".parse().unwrap(),
        gate.local_addr(),
        Some("x"),
    );
    let _ = s.write_all(&header).await;
    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(closed && bytes.is_empty(), "{bytes:02x?}");
    assert_refused_once(&gate, "proxy_untrusted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_without_a_header_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let gate = proxy_listener(&pki, dir.path(), "127.0.0.0/8").await;
    let cert = pki.root.issue(&leaf("sensor-1")).unwrap();
    // A TLS client straight to the listener: its ClientHello is no PROXY header.
    let handshake = tls_connect(gate.local_addr(), &pki.root.cert.cert_pem, &cert, &[]).await;
    assert!(handshake.is_err(), "the handshake went through");
    assert_refused_once(&gate, "proxy_malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_name_too_long_for_mosquittos_header_limit_is_refused_at_load() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // 120 characters of 4 bytes each: within the 128-character rule, over 500 bytes.
    let long = "\u{1F600}".repeat(120);
    let err = gate(
        &pki,
        dir.path(),
        &format!("[{}]", chain_client(&long, SUBJECT)),
        "127.0.0.1:1".into(),
        "",
        true,
    )
    .await
    .err()
    .expect("the load is refused");
    assert!(
        err.contains("clients.json") && err.contains("500-byte limit"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_listeners_and_what_they_expect_first() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _broker) = recording_broker().await;
    let gate = gate(
        &pki,
        dir.path(),
        &format!("[{}]", chain_client("sensor-1", SUBJECT)),
        upstream,
        "proxy_protocol = \"required\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.0.0/16\"]",
        true,
    )
    .await
    .unwrap();
    drop(gate);
    let out = Command::new(env!("CARGO_BIN_EXE_mqttgate"))
        .args(["check", "--config"])
        .arg(dir.path().join("mqttgate.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "listener 127.0.0.1:0: MQTT over TLS, a PROXY v2 header first, from 2 network(s)"
        ),
        "{text}"
    );
    assert!(
        text.contains("a PROXY v2 header with the client's address and verified name first"),
        "{text}"
    );
}
