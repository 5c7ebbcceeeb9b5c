//! JWT authentication (SPEC §9) end to end: issuer keys made with `openssl`, tokens minted
//! with PyJWT (independently of mqttgate's Rust code), clients that present no certificate
//! (a byte-level MQTT 5 client and paho-mqtt), a real Mosquitto behind mqttgate.
//!
//! Mosquitto answers a CONNECT carrying an Authentication Method it has no plugin for with
//! 0x8C, so every JWT client it accepts is also proof that it never saw the method.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use mqttgate::mqtt::properties::id;
use serde_json::{json, Value};

const BAD_AUTHENTICATION_METHOD_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x8c, 0x00];

/// The key-confusion attack: HS256 over the token, keyed with the issuer's public
/// certificate (what a verifier that trusts the header's `alg` would use as the secret).
/// PyJWT refuses to do this itself, so the MAC is made with Python's hmac.
fn mint_hs256_with_public_key(cert: &Path, claims: &Value) -> String {
    let out = Command::new(python())
        .args([
            "-c",
            "import base64, hashlib, hmac, json, sys\n\
             b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=')\n\
             head = b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'}).encode())\n\
             body = b64(sys.argv[2].encode())\n\
             mac = hmac.new(open(sys.argv[1], 'rb').read(), head + b'.' + body, hashlib.sha256).digest()\n\
             print((head + b'.' + body + b'.' + b64(mac)).decode())",
        ])
        .arg(cert)
        .arg(claims.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn denied(reason: &str) -> String {
    format!(
        "mqttgate_auth_decisions_total{{result=\"denied\",reason=\"{reason}\",scheme=\"\",source=\"sub\",method=\"jwt\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_allowed_by_its_token_and_told_its_method() {
    let g = gate("").await;
    let token = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let (connack, mut tls) = connack_for(
        &g.env,
        &jwt_connect("c1", Some("CUSTOM-JWT"), token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00, "{connack:02x?}");
    assert_eq!(connack_method(&connack).as_deref(), Some("CUSTOM-JWT"));
    assert!(ping(&mut tls).await, "the session relays");
    g.env
        .await_metric(
            "mqttgate_auth_decisions_total{result=\"allowed\",reason=\"\",scheme=\"\",source=\"sub\",method=\"jwt\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_with_authentication_method_and_data_publishes_and_receives_as_its_sub() {
    let g = gate("").await;
    let token = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let token_file = write(g.keys.path(), "token", &token);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/paho_jwt.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["localhost", &g.env.port().to_string()])
        .arg(g.env.server_ca())
        .arg("CUSTOM-JWT")
        .arg(&token_file)
        .arg("sensor-9");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let r: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("paho_jwt.py printed no JSON ({e}): {}", text(&out)));
    assert_eq!(r["error"], Value::Null, "{r}");
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["auth_method"], "CUSTOM-JWT", "{r}");
    // Mosquitto's `devices/%u/#` ACL echoes it only to the user named by the token's sub.
    assert_eq!(r["published"], true, "{r}");
    assert_eq!(r["received"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_reason_is_refused_with_0x87_and_counted() {
    let g = gate("").await;
    let other = issuer_key(g.keys.path(), "other");
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims("sensor-9");
        f(c.as_object_mut().unwrap());
        c
    };
    let cases = [
        (
            "expired",
            mint(
                &g.k1,
                &with(&|c| c["exp"] = json!(now() - 1)),
                "RS256",
                &kid("k1"),
            ),
        ),
        (
            "not_yet_valid",
            mint(
                &g.k1,
                &with(&|c| c["nbf"] = json!(now() + 600)),
                "RS256",
                &kid("k1"),
            ),
        ),
        (
            "bad_signature",
            mint(&other, &claims("sensor-9"), "RS256", &kid("k1")),
        ),
        (
            "unknown_kid",
            mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k7")),
        ),
        (
            "bad_issuer",
            mint(
                &g.k1,
                &with(&|c| c["iss"] = json!("https://evil.example")),
                "RS256",
                &kid("k1"),
            ),
        ),
        (
            "bad_audience",
            mint(
                &g.k1,
                &with(&|c| c["aud"] = json!("someone-else")),
                "RS256",
                &kid("k1"),
            ),
        ),
        (
            "bad_algorithm",
            mint(&g.k1, &claims("sensor-9"), "RS512", &kid("k1")),
        ),
        (
            "malformed",
            mint(
                &g.k1,
                &with(&|c| drop(c.remove("sub"))),
                "RS256",
                &kid("k1"),
            ),
        ),
    ];
    for (reason, token) in &cases {
        let (connack, mut tls) = connack_for(
            &g.env,
            &jwt_connect("c", Some("CUSTOM-JWT"), token.as_bytes()),
        )
        .await;
        assert_eq!(connack, NOT_AUTHORIZED_V5, "{reason}");
        let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(3)).await;
        assert!(
            rest.is_empty() && closed,
            "{reason}: closed after the refusal"
        );
        g.env.await_metric(&denied(reason), 1.0).await;
    }
    // An oversized token too.
    let long = "e".repeat(9 * 1024);
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("c", Some("CUSTOM-JWT"), long.as_bytes()),
    )
    .await;
    assert_eq!(connack, NOT_AUTHORIZED_V5);
    g.env.await_metric(&denied("malformed"), 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_and_hs256_signed_with_the_public_key_are_refused() {
    let g = gate("").await;
    let none = mint(Path::new(""), &claims("sensor-9"), "none", &kid("k1"));
    assert!(none.ends_with('.'), "an unsigned token: {none}");
    let confused = mint_hs256_with_public_key(&g.cert("k1"), &claims("sensor-9"));
    for token in [none, confused] {
        let (connack, _) = connack_for(
            &g.env,
            &jwt_connect("c", Some("CUSTOM-JWT"), token.as_bytes()),
        )
        .await;
        assert_eq!(connack, NOT_AUTHORIZED_V5, "{token}");
    }
    g.env.await_metric(&denied("bad_algorithm"), 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kid_added_to_the_key_folder_is_accepted_after_the_reload_without_restart() {
    let g = gate("").await;
    let k1_token = mint(&g.k1, &claims("sensor-1x"), "RS256", &kid("k1"));
    let (connack, mut live) = connack_for(
        &g.env,
        &jwt_connect("old", Some("CUSTOM-JWT"), k1_token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00);
    // The next key, made beside the folder and then moved in (the watcher sees a whole file).
    let k2 = issuer_key(g.keys.path(), "k2");
    let k2_token = mint(&k2, &claims("sensor-2x"), "RS256", &kid("k2"));
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("new", Some("CUSTOM-JWT"), k2_token.as_bytes()),
    )
    .await;
    assert_eq!(connack, NOT_AUTHORIZED_V5, "k2 is not a key yet");
    let generation = g.env.gate.trust().generation;
    std::fs::rename(g.keys.path().join("k2.pem"), g.cert("k2")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || g.env.gate.trust().generation
            > generation)
        .await,
        "the file watcher reloaded"
    );
    assert_eq!(g.env.gate.trust().jwt.as_ref().unwrap().keys.len(), 2);
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("new", Some("CUSTOM-JWT"), k2_token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00, "k2 accepted: {connack:02x?}");
    // The reload re-decided the live k1 session with its own token: it goes on.
    assert!(ping(&mut live).await, "the k1 session survived the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_never_sees_the_authentication_properties() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = issuer_key(keys.path(), "k1");
    let (upstream, broker) = recording_broker().await;
    let pki = Pki::new();
    let mut setup = Setup::new("[]");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(upstream);
    setup.extra = format!(
        "[auth.jwt]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nkeys = [\"{}\"]\n",
        keys.path().join("k1.pem").display()
    );
    let env = Env::start(pki, setup).await;
    let token = mint(&k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let (connack, _tls) = connack_for(
        &env,
        &jwt_connect("c1", Some("CUSTOM-JWT"), token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00);
    let seen = tokio::time::timeout(Duration::from_secs(5), broker)
        .await
        .unwrap()
        .unwrap();
    let (connect, _) = mqttgate::mqtt::parse_connect(&seen, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(connect.authentication_method(), Ok(None));
    assert_eq!(connect.authentication_data(), Ok(None));
    assert_eq!(connect.username.as_deref(), Some("sensor-9"));
    // The other properties pass: session expiry 0.
    assert_eq!(
        connect.properties,
        [id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 0]
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !seen
            .windows(signature.len())
            .any(|w| w == signature.as_bytes()),
        "the token reached the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_client_still_works_and_a_bad_certificate_still_fails_tls() {
    let g = gate("").await;
    let s1 = g.env.pki.root.issue(&leaf("sensor-1")).unwrap();
    assert_accepted(&g.env, &s1, &[], 4, Some("sensor-1")).await;
    assert_accepted(&g.env, &s1, &[], 5, Some("sensor-1")).await;
    assert_broker_sees(&g.env, &s1, &[], Some("sensor-1"), "sensor-1").await;
    let stranger = self_signed(&leaf("sensor-1"), false);
    assert_tls_refused(&g.env, &stranger, &[], "UnknownCA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_and_no_token_is_not_authorized() {
    let g = gate("").await;
    let (connack, _) = connack_for(&g.env, &jwt_connect("c", None, b"")).await;
    assert_eq!(connack, NOT_AUTHORIZED_V5);
    let (connack, _) = connack_for(&g.env, &connect_packet(4, "c", Some("sensor-1"))).await;
    assert_eq!(connack, NOT_AUTHORIZED_V311);
    g.env
        .await_metric(
            "mqttgate_auth_decisions_total{result=\"denied\",reason=\"no_credentials\",scheme=\"\",source=\"\",method=\"certificate\"}",
            2.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_not_configured_gets_bad_authentication_method() {
    let g = gate("").await;
    let token = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("c", Some("OAUTH2-JWT"), token.as_bytes()),
    )
    .await;
    assert_eq!(connack, BAD_AUTHENTICATION_METHOD_V5);
    let g = gate("methods = [\"CUSTOM-JWT\", \"OAUTH2-JWT\"]\n").await;
    let token = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("c", Some("OAUTH2-JWT"), token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_ends_at_exp_with_disconnect_0x98() {
    let g = gate("").await;
    let mut c = claims("sensor-9");
    // Far enough ahead for a loaded machine to mint and connect before it.
    let exp = now() + 5;
    c["exp"] = json!(exp);
    let token = mint(&g.k1, &c, "RS256", &kid("k1"));
    let (connack, mut tls) = connack_for(
        &g.env,
        &jwt_connect("c", Some("CUSTOM-JWT"), token.as_bytes()),
    )
    .await;
    assert_eq!(connack[3], 0x00);
    let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(12)).await;
    // With skew 0 the last accepted second is exp - 1: the session ends at exp.
    let ended = now();
    assert!(
        (exp..=exp + 2).contains(&ended),
        "ended at {ended}, exp {exp}"
    );
    assert_eq!(
        rest,
        [0xe0, 0x02, 0x98, 0x00],
        "DISCONNECT Administrative action"
    );
    assert!(closed);
    g.env
        .await_metric(
            "mqttgate_connections_closed_total{outcome=\"session\",reason=\"token_expired\",transport=\"tls\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_registered_applies_the_registry_state_of_the_sub() {
    let g = gate("require_registered = true\n").await;
    let ok = mint(&g.k1, &claims("sensor-1"), "RS256", &kid("k1"));
    let (connack, _) =
        connack_for(&g.env, &jwt_connect("c", Some("CUSTOM-JWT"), ok.as_bytes())).await;
    assert_eq!(connack[3], 0x00);
    let stranger = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let (connack, _) = connack_for(
        &g.env,
        &jwt_connect("c", Some("CUSTOM-JWT"), stranger.as_bytes()),
    )
    .await;
    assert_eq!(connack, NOT_AUTHORIZED_V5);
}
