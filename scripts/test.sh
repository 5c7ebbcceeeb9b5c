#!/usr/bin/env bash
# The test command: installs what the tests need if missing (Mosquitto, its clients,
# paho-mqtt), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_rust
ensure_packages
ensure_paho
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
