//! Webhook authentication (SPEC §9) against a real HTTPS webhook: Python's http.server
//! over ssl (tests/python/webhook_server.py), its certificate from the harness PKI, which
//! requires mqttgate's own client certificate and records every request it is sent.

mod common;

use std::net::SocketAddr;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use mqttgate::cli::pki::Ca;
use mqttgate::mqtt::{Connect, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const PASSWORD: &[u8] = b"hunter2-webhook-secret";
const SERVER_UNAVAILABLE_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x88, 0x00];
const SERVER_UNAVAILABLE_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x03];

/// mqttgate with `section` (the `[auth.webhook]` table), one registry client (sensor-1,
/// chained to the root) and the root registered.
async fn start_on(pki: Pki, section: String) -> Env {
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = section;
    Env::start(pki, setup).await
}

fn connect(version: Version, client_id: &str, user: Option<&str>, password: &[u8]) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 30,
        properties: vec![],
        client_id: client_id.into(),
        will: None,
        username: user.map(str::to_string),
        password: Some(password.to_vec()),
    }
}

/// A TLS connection to mqttgate presenting no client certificate.
async fn tls_without_certificate(addr: SocketAddr, root_pem: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(mqttgate::trust::verifier::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .expect("handshake without a client certificate")
}

/// Sends `c` without a client certificate; returns the first packet back (the CONNACK)
/// and the connection.
async fn hook_connect(env: &Env, c: &Connect) -> (Vec<u8>, TlsStream<TcpStream>) {
    let mut tls = tls_without_certificate(env.addr(), &env.pki.root.cert.cert_pem).await;
    tls.write_all(&c.encode().unwrap()).await.unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(10))
        .await
        .expect("a CONNACK");
    (connack, tls)
}

fn accepted(connack: &[u8]) -> bool {
    connack[0] == 0x20 && connack[3] == 0
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_client_without_a_certificate_is_the_webhooks_name_upstream() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("")).await;

    // v3.1.1: accepted, and the broker knows the connection by the webhook's name (its
    // %u ACL echoes only devices/<username>/#).
    let (connack, mut tls) = hook_connect(
        &env,
        &connect(Version::V311, "dev-1", Some("allow-1"), PASSWORD),
    )
    .await;
    assert_eq!(connack, [0x20, 2, 0, 0]);
    subscribe(&mut tls, 1, "devices/hook-allow-1/x", 0).await;
    let publish = publish_packet("devices/hook-allow-1/x", 0, 0, b"hi");
    tls.write_all(&publish).await.unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await.unwrap(),
        publish,
        "the broker echoes the webhook's authentication name's topic"
    );

    // The request, field by field: no certificate fields for a client without one.
    let r = &hook.requests_for("allow-1")[0];
    assert_eq!(r["path"], "/mqtt/auth");
    assert_eq!(r["content_type"], "application/json");
    assert_eq!(r["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(r["client_subject"]["commonName"], "mqttgate-gw");
    let body = r["body"].as_object().unwrap();
    assert_eq!(body["clientId"], "dev-1");
    assert_eq!(body["userName"], "allow-1");
    assert_eq!(body["password"], b64(PASSWORD));
    let mut keys: Vec<_> = body.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["clientId", "password", "userName"]);

    // v5 with an Authentication Method of its own: sent to the webhook, never to the
    // broker (Mosquitto would refuse a method it has no plugin for with 0x8C).
    let mut v5 = connect(Version::V5, "dev-2", Some("allow-2"), PASSWORD);
    let mut props = vec![0x15, 0, 4];
    props.extend_from_slice(b"HOOK");
    props.extend_from_slice(&[0x16, 0, 3, 0, 0xff, 7]);
    v5.properties = props;
    let (connack, _v5) = hook_connect(&env, &v5).await;
    assert!(accepted(&connack), "{connack:02x?}");
    // MQTT-4.12.0-5: the CONNACK names the method the client sent.
    assert!(
        connack
            .windows(7)
            .any(|w| w == [0x15, 0, 4, b'H', b'O', b'O', b'K']),
        "{connack:02x?}"
    );
    let body = &hook.requests_for("allow-2")[0]["body"];
    assert_eq!(body["authenticationMethod"], "HOOK");
    assert_eq!(body["authenticationData"], b64(&[0, 0xff, 7]));
    env.await_metric(
        "mqttgate_auth_decisions_total{result=\"allowed\",reason=\"\",scheme=\"\",source=\"webhook\",method=\"webhook\"}",
        2.0,
    )
    .await;
    env.await_metric("mqttgate_webhook_requests_total{result=\"allow\"}", 2.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bearer_token_is_sent_after_a_reload() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("cache = false")).await;
    let c = connect(Version::V311, "r", Some("allow-r"), b"x");
    assert!(accepted(&hook_connect(&env, &c).await.0));
    write(hook.dir.path(), "token", "rotated-token\n");
    env.gate.reload().expect("reload with the new token");
    assert!(accepted(&hook_connect(&env, &c).await.0));
    let sent: Vec<_> = hook
        .requests_for("allow-r")
        .iter()
        .map(|r| r["authorization"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sent,
        [format!("Bearer {TOKEN}"), "Bearer rotated-token".into()]
    );
    // A token file that cannot be used fails the reload and keeps the last good state.
    write(hook.dir.path(), "token", "\n");
    let err = env.gate.reload().unwrap_err().to_string();
    assert!(err.contains("token") && !err.contains("rotated"), "{err}");
    assert!(accepted(&hook_connect(&env, &c).await.0));
    assert_eq!(
        hook.requests_for("allow-r")[2]["authorization"],
        "Bearer rotated-token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_client_is_jwts_whatever_decides_says() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    // An RSA issuer certificate, so [auth.jwt] loads; no token here is valid.
    let keys = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=issuer", "-keyout"])
        .arg(keys.path().join("k1.key"))
        .arg("-out")
        .arg(keys.path().join("k1.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(keys.path().join("k1.key")).unwrap();
    let section = format!(
        "{}\n[auth.jwt]\nissuer = \"https://issuer.example\"\naudiences = [\"mqttgate\"]\nkeys = [\"{}\"]\n",
        hook.section("decides = \"all\""),
        keys.path().display()
    );
    let env = start_on(pki, section).await;
    let with_method = |method: &str| {
        let mut c = connect(Version::V5, "j", Some("allow-jwt"), b"x");
        let mut props = vec![0x15, 0, method.len() as u8];
        props.extend_from_slice(method.as_bytes());
        props.extend_from_slice(&[0x16, 0, 3, b'a', b'.', b'b']);
        c.properties = props;
        c
    };
    // A bad token is JWT's refusal, a method JWT does not take its 0x8C: never the webhook's.
    assert_eq!(
        hook_connect(&env, &with_method("CUSTOM-JWT")).await.0,
        NOT_AUTHORIZED_V5
    );
    assert_eq!(
        hook_connect(&env, &with_method("HOOK")).await.0,
        [0x20, 0x03, 0x00, 0x8c, 0x00]
    );
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());
    // Without an Authentication Method, the webhook decides.
    let plain = connect(Version::V5, "j", Some("allow-jwt"), b"x");
    assert!(accepted(&hook_connect(&env, &plain).await.0));
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_only_mode_lets_webhook_clients_through_and_counts_would_deny() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let mut setup = Setup::new("[]");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.top = "mode = \"audit\"\n".to_string();
    setup.extra = hook.section("timeout_ms = 1000");
    let env = Env::start(pki, setup).await;
    // Denied, and given no answer at all: both let through as themselves (SPEC §12).
    // A deny names the webhook as the source; no answer leaves only the username.
    for (user, reason, source) in [
        ("deny-audit", "webhook_deny", "webhook"),
        ("error500-audit", "webhook_status_5xx", "username"),
    ] {
        let (connack, _) = hook_connect(&env, &connect(Version::V311, "a", Some(user), b"x")).await;
        assert_eq!(connack, [0x20, 2, 0, 0], "{user}");
        env.await_metric(
            &format!("mqttgate_auth_decisions_total{{result=\"would_deny\",reason=\"{reason}\",scheme=\"\",source=\"{source}\",method=\"webhook\"}}"),
            1.0,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_webhook_ca_applies_to_the_next_request_not_to_a_pooled_connection() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("cache = false")).await;
    let c = connect(Version::V311, "ca", Some("allow-ca"), b"x");
    assert!(accepted(&hook_connect(&env, &c).await.0));
    // A CA that did not issue the webhook's certificate: the idle pooled connection (made
    // under the old CA) is not reused, and the new one fails verification.
    let good = std::fs::read_to_string(hook.dir.path().join("hook-ca.pem")).unwrap();
    let other = Ca::root("Other CA").unwrap();
    write(hook.dir.path(), "hook-ca.pem", &other.cert.cert_pem);
    env.gate.reload().expect("reload with another webhook CA");
    assert_eq!(hook_connect(&env, &c).await.0, SERVER_UNAVAILABLE_V311);
    env.await_metric("mqttgate_webhook_requests_total{result=\"error\"}", 1.0)
        .await;
    write(hook.dir.path(), "hook-ca.pem", &good);
    env.gate.reload().expect("reload with the webhook's CA");
    assert!(accepted(&hook_connect(&env, &c).await.0));
    assert_eq!(hook.requests_for("allow-ca").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_username_password_and_no_certificate() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let mut setup = Setup::new("[]");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = hook.section("");
    let env = Env::start(pki, setup).await;
    for (user, ok) in [("allow-mp", true), ("deny-mp", false)] {
        let out = Command::new(tool("mosquitto_pub"))
            .args(["-h", "localhost", "-p", &env.port().to_string()])
            .arg("--cafile")
            .arg(env.server_ca())
            .args(["-u", user, "-P", "s3cret", "-V", "mqttv311"])
            .args(["-t", &format!("devices/hook-{user}/x"), "-m", "hello"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if ok {
            assert_pub_ok(&out);
        } else {
            assert_pub_not_authorised(&out);
        }
        assert_eq!(
            hook.requests_for(user)[0]["body"]["password"],
            b64(b"s3cret")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_certificate_clients_are_sent_as_pem_and_registry_clients_never_are() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = {
        let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
        setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
        setup.extra = hook.section("decides = \"unregistered\"");
        Env::start(pki, setup).await
    };
    // A registered client: the registry decides, the webhook hears nothing.
    let registered = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    assert_accepted(&env, &registered, &[], 4, Some("sensor-1")).await;
    // Disabled or mismatching registry clients are the registry's too: a wrong name in
    // the certificate for sensor-1 is denied without asking.
    let imposter = env.pki.root.issue(&leaf("someone-else")).unwrap();
    assert_not_authorized(&env, &imposter, &[], 4, Some("sensor-1")).await;
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());

    // An unregistered client through the intermediate: its certificate and chain as PEM.
    let stranger = env.pki.inter.issue(&leaf("stranger")).unwrap();
    let inter = env.pki.inter.cert.clone();
    assert_accepted(&env, &stranger, &[&inter], 4, Some("allow-pem")).await;
    let body = &hook.requests_for("allow-pem")[0]["body"];
    let leaf_pem = body["clientCertificate"].as_str().unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(leaf_pem.as_bytes())
            .unwrap()
            .as_ref(),
        &stranger.der[..]
    );
    let chain: Vec<Vec<u8>> =
        CertificateDer::pem_slice_iter(body["clientCertificateChain"].as_str().unwrap().as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
    assert_eq!(chain, vec![stranger.der.clone(), inter.der.clone()]);
    assert_eq!(hook.requests().len(), 1);
    // A bad certificate still fails TLS: the webhook cannot rescue it.
    let unknown_ca = Ca::root("Elsewhere").unwrap();
    let outsider = unknown_ca.issue(&leaf("outsider")).unwrap();
    assert!(matches!(
        connect_as(&env, &outsider, &[], 4, Some("allow-x")).await,
        Heard::TlsRefused(_)
    ));
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_malformed_answers_are_not_authorized() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("")).await;
    for user in ["deny-1", "malformed-1", "nobody-1"] {
        let (c5, _) = hook_connect(&env, &connect(Version::V5, "d", Some(user), b"x")).await;
        assert_eq!(c5, NOT_AUTHORIZED_V5, "{user}");
        let (c3, _) = hook_connect(&env, &connect(Version::V311, "d", Some(user), b"x")).await;
        assert_eq!(c3, NOT_AUTHORIZED_V311, "{user}");
    }
    env.await_metric("mqttgate_webhook_requests_total{result=\"deny\"}", 4.0)
        .await;
    env.await_metric("mqttgate_webhook_requests_total{result=\"malformed\"}", 2.0)
        .await;
    env.await_metric(
        "mqttgate_auth_decisions_total{result=\"denied\",reason=\"webhook_malformed\",scheme=\"\",source=\"webhook\",method=\"webhook\"}",
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_server_errors_are_server_unavailable() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("timeout_ms = 1000")).await;
    for user in ["slow-1", "error500-1"] {
        let started = Instant::now();
        let (c5, _) = hook_connect(&env, &connect(Version::V5, "t", Some(user), b"x")).await;
        assert_eq!(c5, SERVER_UNAVAILABLE_V5, "{user}");
        let (c3, _) = hook_connect(&env, &connect(Version::V311, "t", Some(user), b"x")).await;
        assert_eq!(c3, SERVER_UNAVAILABLE_V311, "{user}");
        // The timeout is a hard deadline: well before the webhook's 3 s answer.
        assert!(started.elapsed() < Duration::from_millis(2800), "{user}");
    }
    env.await_metric("mqttgate_webhook_requests_total{result=\"timeout\"}", 2.0)
        .await;
    env.await_metric(
        "mqttgate_webhook_requests_total{result=\"status_5xx\"}",
        2.0,
    )
    .await;
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"webhook_timeout\",transport=\"tls\"}",
        2.0,
    )
    .await;
    let (_, scrape) = admin_get(env.gate.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(&scrape, "mqttgate_webhook_request_seconds_count"),
        Some(4.0),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_concurrent_is_server_unavailable_at_once() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = Arc::new(start_on(pki, hook.section("timeout_ms = 5000\nmax_concurrent = 1")).await);
    let slow = {
        let env = env.clone();
        tokio::spawn(async move {
            hook_connect(&env, &connect(Version::V5, "s", Some("slow-c"), b"x"))
                .await
                .0
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || !hook
            .requests_for("slow-c")
            .is_empty())
        .await
    );
    let started = Instant::now();
    let (c5, _) = hook_connect(&env, &connect(Version::V5, "o", Some("allow-o"), b"x")).await;
    assert_eq!(c5, SERVER_UNAVAILABLE_V5);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(hook.requests_for("allow-o").is_empty());
    env.await_metric("mqttgate_webhook_requests_total{result=\"overload\"}", 1.0)
        .await;
    // The slow one is answered once the webhook is (3 s, inside the 5 s timeout).
    assert!(accepted(&slow.await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_allow_avoids_a_second_call_until_the_request_changes() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("")).await;
    let c = connect(Version::V311, "same", Some("allow-cache"), PASSWORD);
    for _ in 0..3 {
        assert!(accepted(&hook_connect(&env, &c).await.0));
    }
    assert_eq!(hook.requests_for("allow-cache").len(), 1);
    env.await_metric("mqttgate_webhook_requests_total{result=\"cached\"}", 2.0)
        .await;
    // Anything different in the request is a different key: a new password asks again.
    let other = connect(Version::V311, "same", Some("allow-cache"), b"another");
    assert!(accepted(&hook_connect(&env, &other).await.0));
    assert_eq!(hook.requests_for("allow-cache").len(), 2);
    // Denials are not cached.
    let deny = connect(Version::V311, "d", Some("deny-cache"), b"x");
    for _ in 0..2 {
        assert_eq!(hook_connect(&env, &deny).await.0, NOT_AUTHORIZED_V311);
    }
    assert_eq!(hook.requests_for("deny-cache").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiration_ends_the_session() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("")).await;
    // The webhook answers expiration = now + 2 s.
    let (connack, mut tls) =
        hook_connect(&env, &connect(Version::V5, "e", Some("short-1"), b"x")).await;
    assert!(accepted(&connack), "{connack:02x?}");
    let started = Instant::now();
    let disconnect = read_packet(&mut tls, Duration::from_secs(8))
        .await
        .expect("a DISCONNECT at expiration");
    assert_eq!(disconnect[0], 0xe0, "{disconnect:02x?}");
    assert_eq!(disconnect[2], 0x98, "administrative action");
    assert!(started.elapsed() < Duration::from_secs(5));
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"webhook_expired\",transport=\"tls\"}",
        1.0,
    )
    .await;
}

/// A webhook that accepts TCP connections and never says a word.
async fn dead_webhook() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

/// Accept-to-CONNACK of `n` certificate clients one after another, as the client sees it.
async fn certificate_client_times(
    env: &Env,
    cert: &mqttgate::cli::pki::Issued,
    n: usize,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        assert_accepted(env, cert, &[], 4, Some("sensor-1")).await;
        times.push(started.elapsed());
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_does_not_slow_certificate_clients() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let (dead, accepted_by_dead) = dead_webhook().await;
    let section = hook.section_for(
        &format!("https://localhost:{}/auth", dead.port()),
        "timeout_ms = 3000\ndecides = \"unregistered\"",
    );
    let env = Arc::new(start_on(pki, section).await);
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let before = certificate_client_times(&env, &cert, 5).await;

    // Eight webhook clients waiting on the dead webhook, then the same measurement.
    let waiting: Vec<_> = (0..8)
        .map(|i| {
            let env = env.clone();
            tokio::spawn(async move {
                let c = connect(Version::V5, &format!("w{i}"), Some("allow-dead"), b"x");
                let started = Instant::now();
                let (connack, _) = hook_connect(&env, &c).await;
                (connack, started.elapsed())
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || accepted_by_dead
            .load(Ordering::SeqCst)
            >= 8)
        .await,
        "the webhook clients never reached the dead webhook"
    );
    let during = certificate_client_times(&env, &cert, 5).await;
    let (max_before, max_during) = (before.iter().max().unwrap(), during.iter().max().unwrap());
    eprintln!("certificate clients' accept-to-CONNACK: before {before:?}, while the webhook hangs {during:?}");
    // "Unchanged": each answered well within the webhook's 3 s timeout, and close to
    // what it took before.
    assert!(*max_during < Duration::from_millis(1000), "{during:?}");
    assert!(
        *max_during < *max_before + Duration::from_millis(500),
        "before {before:?}, during {during:?}"
    );
    for w in waiting {
        let (connack, took) = w.await.unwrap();
        assert_eq!(connack, SERVER_UNAVAILABLE_V5);
        assert!(took >= Duration::from_millis(2900), "{took:?}");
    }
    env.await_metric("mqttgate_webhook_requests_total{result=\"timeout\"}", 8.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_and_the_token_never_reach_the_log() {
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let env = start_on(pki, hook.section("")).await;
    // Debug level everywhere: whatever mqttgate might log, it is in this file.
    std::env::set_var("RUST_LOG", "debug");
    let binary = env.spawn_binary("webhook-log", &["--log-format", "json"], |c| c);
    std::env::remove_var("RUST_LOG");
    let root = env.pki.root.cert.cert_pem.clone();
    for user in ["allow-log", "deny-log", "malformed-log", "error500-log"] {
        let mut tls = tls_without_certificate(binary.addr, &root).await;
        tls.write_all(
            &connect(Version::V5, "log", Some(user), PASSWORD)
                .encode()
                .unwrap(),
        )
        .await
        .unwrap();
        let _ = read_packet(&mut tls, Duration::from_secs(5)).await;
    }
    let log_path = binary.log.clone();
    let answered = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("webhook_answer"))
            .any(|l| l.contains(needle))
    };
    assert!(
        // Refusals from one address are rate-limited in the log, so the last ones may
        // not be there; the third (malformed) is.
        eventually(Duration::from_secs(5), || answered("malformed")
            && hook.requests().len() == 4)
        .await,
        "no webhook_answer events: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    binary.signal("TERM");
    binary.wait().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    for secret in [
        String::from_utf8_lossy(PASSWORD).into_owned(),
        b64(PASSWORD),
        TOKEN.to_string(),
    ] {
        assert!(
            !log.contains(&secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| {
            e["fields"]["event"] == "webhook_answer" || e["event"] == "webhook_answer"
        })
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("hook-allow-log")),
        "the allow's name is in the audit event: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("not on the list: deny-log")),
        "the deny's errorReason is in the audit event: {events:?}"
    );
}
