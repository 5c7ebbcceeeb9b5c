//! Strings a client chooses (CONNECT client id and username, certificate fields) cannot
//! forge log lines, in the default text log and in JSON, with the real binary.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
/// What a forged line would start with.
const FORGED_START: &str = "2026-01-01T00:00:00Z";
const FORGE: &str = "\n2026-01-01T00:00:00Z  INFO forged";

/// One allowed session whose client id carries a forged line, one denial whose username
/// and certificate CN carry one; returns the binary's log once all three events are in.
async fn log_of_forging_clients(format: &[&str]) -> String {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let binary = env.spawn_binary("forge", format, |c| c);
    let root = env.pki.root.cert.cert_pem.clone();

    let good = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut allowed = tls_connect(binary.addr, &root, &good, &[]).await.unwrap();
    let client_id = format!("dev{FORGE}");
    allowed
        .write_all(&connect_packet(4, &client_id, Some("sensor-1")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut allowed, Duration::from_secs(5)).await,
        Some(vec![0x20, 2, 0, 0])
    );
    drop(allowed);

    let forger = env.pki.root.issue(&leaf(&format!("cn{FORGE}"))).unwrap();
    let mut denied = tls_connect(binary.addr, &root, &forger, &[]).await.unwrap();
    denied
        .write_all(&connect_packet(
            5,
            &client_id,
            Some(&format!("user{FORGE}")),
        ))
        .await
        .unwrap();
    let (answer, _) = read_until_close(&mut denied, Duration::from_secs(5)).await;
    assert_eq!(answer, [0x20, 3, 0, 0x87, 0]);

    let path = binary.log.clone();
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    let complete = |log: &str| {
        log.matches("authentication decision").count() == 2
            && (log.contains("outcome=\"session\"") || log.contains("\"outcome\":\"session\""))
    };
    assert!(
        eventually(Duration::from_secs(5), || complete(&read())).await,
        "{}",
        read()
    );
    read()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_strings_cannot_forge_lines_in_the_text_log() {
    let log = log_of_forging_clients(&[]).await;
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with(FORGED_START))
        .collect();
    assert!(forged.is_empty(), "forged lines {forged:#?} in:\n{log}");
    // The strings are there, escaped, on the decision lines.
    for escaped in [
        r"dev\n2026-01-01T00:00:00Z  INFO forged",
        r"user\n2026-01-01T00:00:00Z  INFO forged",
        r"cn\n2026-01-01T00:00:00Z  INFO forged",
    ] {
        assert!(log.contains(escaped), "{escaped} not in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_strings_stay_whole_inside_json_log_events() {
    let log = log_of_forging_clients(&["--log-format", "json"]).await;
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in:\n{log}")))
        .collect();
    let decisions: Vec<_> = events.iter().filter(|e| e["event"] == "decision").collect();
    assert_eq!(decisions.len(), 2, "{log}");
    for d in &decisions {
        assert_eq!(d["client_id"], format!("dev{FORGE}"), "{d}");
    }
    let denied = decisions
        .iter()
        .find(|e| e["result"] == "denied")
        .expect("denied event");
    assert_eq!(denied["authentication_name"], format!("user{FORGE}"));
    assert!(
        denied["subject"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("cn{FORGE}"))),
        "{denied}"
    );
}
