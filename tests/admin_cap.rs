//! The admin listener's connection cap: past `admin.max_connections`, the newest
//! connection is closed at once and counted; the ones already open are served as before.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const CAP: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connection_past_the_cap_is_closed_at_once_and_counted() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("dev-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let bin = env.spawn_binary("admin-cap", &[], |c| {
        c.replace(
            "upstream_check_interval_ms = 200\n",
            &format!("upstream_check_interval_ms = 200\nmax_connections = {CAP}\n"),
        )
    });
    // Start from no other admin connection (the startup probes gone): the scrape sees
    // only itself, and its slot is free once its answer arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, scrape) = admin_get(bin.admin, "/metrics").await;
        if metric(&scrape, "mqttgate_admin_connections_open") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idle connections that never send a request hold every slot.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(bin.admin).await.unwrap());
    }
    let mut newest = TcpStream::connect(bin.admin).await.unwrap();
    let mut byte = [0u8; 1];
    // Well inside the 5 s request deadline that would otherwise end it.
    let closed = tokio::time::timeout(Duration::from_secs(1), newest.read(&mut byte))
        .await
        .expect("the connection past the cap is closed at once");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // The accept loop is sequential: had an idle one been refused, its close would have
    // come before the newest one's.
    for s in &idle {
        let mut b = [0u8; 1];
        assert!(
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the connections within the cap stay open"
        );
    }
    let mut refused = 1;

    drop(idle);
    // Polled: the server sees the idle ones close a moment after we do; until then a
    // scrape is itself refused, and counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let (status, body) = admin_get(bin.admin, "/metrics").await;
        if status == 200 {
            break body;
        }
        // Closed unanswered: the server had not yet seen the idle ones go.
        assert_eq!(status, 0, "{body}");
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "the admin listener answers once the idle ones close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric(&scrape, "mqttgate_admin_connections_refused_total"),
        Some(refused as f64),
        "{scrape}"
    );
    assert_eq!(admin_get(bin.admin, "/readyz").await.0, 200);
}
