//! Smoke test of the load generator (`mqttgate-load`), so the benchmark tool can't rot: each
//! mode runs for about a second against a real Mosquitto behind an in-process mqttgate, and
//! its JSON line must report work done and no errors.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// The load generator is its own workspace member (tools/load), so cargo gives this package
/// no path to it: it sits beside this test's own directory in the target folder.
fn load_generator() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("mqttgate-load"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --workspace` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

async fn load(env: &Env, cert: &std::path::Path, key: &std::path::Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(load_generator());
    cmd.args(["--addr", &env.addr().to_string(), "--tls", "--ca"])
        .arg(env.server_ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["--pid", &format!("gate={}", std::process::id())])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run mqttgate-load"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mqttgate-load {args:?} failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_storm_pubsub_and_idle_work_through_mqttgate() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{}]",
        chain_client("sensor-1", "SubjectMatchesAuthenticationName")
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.sources = vec!["ClientCertificateSubject"];
    // Many sessions of one identity at once need distinct client ids at the broker.
    setup.client_id = Some("per-identity");
    let env = Env::start(pki, setup).await;
    let issued = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (cert, key) = env.client_files("sensor-1", &issued, &[]);

    let storm = load(
        &env,
        &cert,
        &key,
        &["--duration", "1", "storm", "--concurrency", "4"],
    )
    .await;
    assert_eq!(storm["errors"], 0, "{storm}");
    assert!(storm["connections"].as_u64().unwrap() > 5, "{storm}");
    assert!(storm["cpu_s"]["gate"].as_f64().unwrap() > 0.0, "{storm}");

    // The broker's ACL lets sensor-1 use devices/sensor-1/#.
    for (qos, rate) in [("0", "0"), ("1", "200")] {
        let r = load(
            &env,
            &cert,
            &key,
            &[
                "--duration",
                "1",
                "--mqtt",
                if qos == "0" { "4" } else { "5" },
                "pubsub",
                "--publishers",
                "2",
                "--subscribers",
                "2",
                "--qos",
                qos,
                "--rate",
                rate,
                "--topic-prefix",
                "devices/sensor-1",
            ],
        )
        .await;
        assert_eq!(r["publish_errors"], 0, "{r}");
        assert!(r["received"].as_u64().unwrap() > 50, "{r}");
        assert!(r["lat_us_p50"].as_f64().unwrap() > 0.0, "{r}");
        if qos == "1" {
            assert_eq!(r["lost"], 0, "QoS 1 loses nothing: {r}");
        }
    }

    let idle = load(
        &env,
        &cert,
        &key,
        &["idle", "--counts", "10,30", "--settle-ms", "100"],
    )
    .await;
    assert_eq!(idle["errors"], 0, "{idle}");
    let stages = idle["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "{idle}");
    assert_eq!(stages[2]["connections"], 30, "{idle}");
    assert!(
        stages[2]["rss_kib"]["gate"].as_f64().unwrap() > 0.0,
        "{idle}"
    );
}
