//! The admin listener's connection cap: past `admin.max_connections`, the oldest idle
//! connection (no request head yet) is closed for the newcomer and counted, so a scrape
//! behind idle connections is answered; an idle one is also closed at its header deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mqttgate::config::Config;
use mqttgate::server::Server;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const CAP: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_the_oldest_idle_admin_connection_is_closed_and_counted() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("dev-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    // A second mqttgate in-process on the same files with the small cap: its metrics are
    // read without a scrape, so no scrape of ours is still holding a slot when we start.
    let text = std::fs::read_to_string(&env.config_file).unwrap().replace(
        "upstream_check_interval_ms = 200\n",
        &format!("upstream_check_interval_ms = 200\nmax_connections = {CAP}\n"),
    );
    let config = write(env.dir.path(), "admin-cap.toml", &text);
    let gate = Server::start(Config::load(&config).unwrap()).await.unwrap();
    let admin = gate.admin_addr();
    let refused = || {
        metric(
            &gate.metrics.render(),
            "mqttgate_admin_connections_refused_total",
        )
    };
    assert_eq!(
        metric(&gate.metrics.render(), "mqttgate_admin_connections_open"),
        Some(0.0)
    );

    // Idle connections that never send a request hold every slot.
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    let newest = TcpStream::connect(admin).await.unwrap();
    let mut byte = [0u8; 1];
    // Well inside the header deadline (2 s) that would otherwise end it.
    let closed = tokio::time::timeout(Duration::from_secs(1), idle[0].read(&mut byte))
        .await
        .expect("the oldest idle connection is closed at once");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // The accept loop is sequential: the others and the newest are still open.
    for s in idle[1..].iter().chain([&newest]) {
        let mut b = [0u8; 1];
        assert!(
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "only the oldest idle connection is closed"
        );
    }
    // A scrape now sheds the next idle one and is answered at once.
    let started = Instant::now();
    let (status, scrape) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{scrape}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The oldest idle one for the newest, the next for the scrape.
    assert_eq!(refused(), Some(2.0), "{scrape}");
    // The idle ones left are closed at their header deadline (2 s), unanswered, well
    // before the whole exchange's deadline (5 s).
    for mut s in idle.into_iter().skip(2).chain([newest]) {
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    }
    assert!(
        opened.elapsed() < Duration::from_millis(4500),
        "closed after {:?}",
        opened.elapsed()
    );
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
}
