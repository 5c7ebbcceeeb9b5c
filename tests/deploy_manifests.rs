//! deploy/ stays valid: runs tests/deploy/validate.sh (Kubernetes schema validation of the
//! rendered kustomize output, PodMonitor and dashboard checks, `mqttgate check` on the
//! shipped config and registry, Mosquitto started with the shipped config). The script
//! installs what it needs; when it can't, this test fails rather than skips.

use std::process::Command;

#[test]
fn deploy_manifests_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/tests/deploy/validate.sh"))
        .env("MQTTGATE_BIN", env!("CARGO_BIN_EXE_mqttgate"))
        .output()
        .expect("run bash tests/deploy/validate.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validate.sh failed:\n{text}");
    assert!(text.contains("deploy/ is valid"), "{text}");
}
