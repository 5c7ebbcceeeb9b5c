#!/usr/bin/env bash
# The test command: installs what the tests need if missing (Mosquitto, its clients,
# paho-mqtt, MQTT.js, ss, prlimit), then checks formatting, lints and docs, builds the whole
# workspace (the load generator too, which tests/load_smoke.rs runs) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_rust
ensure_packages
ensure_paho
ensure_mqttjs
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The product builds without the demo PKI (the `demo` feature is on by default).
cargo build --locked --quiet -p mqttgate --no-default-features
# The fuzz targets still build (their own workspace, sharing this target folder so the
# dependencies are compiled once; running them needs cargo-fuzz).
cargo build --locked --quiet --manifest-path fuzz/Cargo.toml --target-dir target
cargo build --workspace --locked --quiet
cargo test --workspace --all-targets --locked
