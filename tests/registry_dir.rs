//! A registry from many files (issue 13, point 3): `registry.clients` may name a directory,
//! every `*.json` in it is one Azure-shaped list, merged with the uniqueness rules across
//! files, and the watcher reloads when one of them changes, appears or goes.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::config::Config;
use mqttgate::server::Server;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

fn disabled(name: &str) -> String {
    chain_client(name, SUBJECT).replace("\"Enabled\"", "\"Disabled\"")
}

/// An environment with a folder `clients.d` holding `a.json` (sensor-1) and `b.json`.
async fn directory_env(b_json: &str) -> (Env, std::path::PathBuf) {
    let pki = Pki::new();
    let mut setup = Setup::new("[]");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let dir = env.path("clients.d");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        "a.json",
        &format!("[{}]", chain_client("sensor-1", SUBJECT)),
    );
    write(&dir, "b.json", b_json);
    (env, dir)
}

/// A second mqttgate on the environment's config with `registry.clients` = `clients.d`.
async fn gate_on_directory(env: &Env) -> std::sync::Arc<Server> {
    let text = std::fs::read_to_string(&env.config_file)
        .unwrap()
        .replace("clients = \"clients.json\"", "clients = \"clients.d\"");
    std::fs::write(&env.config_file, text).unwrap();
    Server::start(Config::load(&env.config_file).unwrap())
        .await
        .unwrap()
}

async fn connack(gate: &Server, env: &Env, name: &str) -> Vec<u8> {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let Ok(mut tls) = tls_connect(gate.local_addr(), &env.pki.root.cert.cert_pem, &cert, &[]).await
    else {
        return Vec::new();
    };
    use tokio::io::AsyncWriteExt;
    tls.write_all(&connect_packet(4, name, Some(name)))
        .await
        .unwrap();
    read_packet(&mut tls, Duration::from_secs(5))
        .await
        .unwrap_or_default()
}

const OK: [u8; 4] = [0x20, 2, 0, 0];

async fn until_connack(gate: &Server, env: &Env, name: &str, want: [u8; 4]) -> bool {
    for _ in 0..50 {
        if connack(gate, env, name).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_directory_merges_its_files_and_reloads_when_one_changes() {
    // b.json in the ARM list shape: both shapes mix in one folder.
    let (env, dir) = directory_env(&format!(
        "{{\"value\":[{}]}}",
        chain_client("sensor-2", SUBJECT)
    ))
    .await;
    // Not a registry file: left out.
    write(&dir, "notes.txt", "not json");
    let gate = gate_on_directory(&env).await;
    assert_eq!(connack(&gate, &env, "sensor-1").await, OK);
    assert_eq!(connack(&gate, &env, "sensor-2").await, OK);

    // One file edited: its client disabled, the other file's untouched.
    write(&dir, "b.json", &format!("[{}]", disabled("sensor-2")));
    assert!(until_connack(&gate, &env, "sensor-2", NOT_AUTHORIZED_V311).await);
    assert_eq!(connack(&gate, &env, "sensor-1").await, OK);
    // A file added.
    write(
        &dir,
        "c.json",
        &format!("[{}]", chain_client("sensor-3", SUBJECT)),
    );
    assert!(until_connack(&gate, &env, "sensor-3", OK).await);
    // A file removed.
    std::fs::remove_file(dir.join("a.json")).unwrap();
    assert!(until_connack(&gate, &env, "sensor-1", NOT_AUTHORIZED_V311).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_fails_the_reload_as_a_whole_naming_it() {
    let (env, dir) = directory_env(&format!("[{}]", chain_client("sensor-2", SUBJECT))).await;
    let gate = gate_on_directory(&env).await;

    write(&dir, "b.json", "[{\"name\": ");
    let err = gate.reload().unwrap_err().to_string();
    assert!(err.contains("b.json"), "{err}");
    // The previous state stays whole: both files' clients still get in.
    assert_eq!(connack(&gate, &env, "sensor-1").await, OK);
    assert_eq!(connack(&gate, &env, "sensor-2").await, OK);

    // A name in two files is refused, naming both.
    write(
        &dir,
        "b.json",
        &format!("[{}]", chain_client("SENSOR-1", SUBJECT)),
    );
    let err = gate.reload().unwrap_err().to_string();
    assert!(
        err.contains("b.json") && err.contains("a.json") && err.contains("\"sensor-1\""),
        "{err}"
    );
}
