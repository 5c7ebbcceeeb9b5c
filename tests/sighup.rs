//! SIGHUP reloads the trust files in the real binary, with file watching turned off.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const RELOADED: &str = "mqttgate_reloads_total{component=\"all\",result=\"success\"}";
const REFUSED: &str = "mqttgate_reloads_total{component=\"registry\",result=\"failure\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_registry_and_a_bad_one_is_kept_out() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let mut binary = env.spawn_binary("hup", &[], |c| {
        c.replace("watch_interval_ms = 200", "watch_interval_ms = 0")
    });
    let addr = binary.addr;
    let root = env.pki.root.cert.cert_pem.clone();
    let cert = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let answer = |addr| {
        let root = root.clone();
        let cert = cert.clone();
        async move {
            let mut tls = tls_connect(addr, &root, &cert, &[]).await.unwrap();
            tls.write_all(&connect_packet(4, "x", Some("sensor-2")))
                .await
                .unwrap();
            read_until_close(&mut tls, Duration::from_millis(500))
                .await
                .0[..4]
                .to_vec()
        }
    };
    assert_eq!(
        answer(addr).await,
        [0x20, 0x02, 0x00, 0x05],
        "unknown before the reload"
    );
    std::fs::write(
        &env.registry_file,
        format!(
            "[{},{}]",
            chain_client("sensor-1", SUBJECT),
            chain_client("sensor-2", SUBJECT)
        ),
    )
    .unwrap();
    // Watching is off: the edit alone changes nothing. Nothing to wait for: the time
    // passing (two of the 200 ms watch intervals the other tests use) is what is tested.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(answer(addr).await, [0x20, 0x02, 0x00, 0x05]);
    binary.signal("HUP");
    await_metric(binary.admin, RELOADED, 1.0, Duration::from_secs(5)).await;
    assert_eq!(
        answer(addr).await,
        [0x20, 0x02, 0x00, 0x00],
        "known after SIGHUP"
    );
    // A broken file on the next SIGHUP keeps the state that works.
    std::fs::write(&env.registry_file, "[").unwrap();
    binary.signal("HUP");
    await_metric(binary.admin, REFUSED, 1.0, Duration::from_secs(5)).await;
    assert_eq!(answer(addr).await, [0x20, 0x02, 0x00, 0x00]);
    assert!(binary.is_running(), "a bad reload never stops the process");
}
