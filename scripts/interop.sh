#!/usr/bin/env bash
# Interoperability tests that need a part a fresh Debian machine cannot install: Mosquitto
# 2.1 (PROXY protocol v2; Debian ships 2.0). Give either a Mosquitto 2.1 binary or the
# folder with the vendored source and its build script:
#
#   MOSQUITTO_21=/path/to/mosquitto scripts/interop.sh
#   scripts/interop.sh ../shared/vendor          # builds 2.1 under target/ (about 30 s)
#
# Without either it fails with a message: it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_rust
ensure_packages
if [ -z "${MOSQUITTO_21:-}" ]; then
  vendor=${1:-}
  if [ -z "$vendor" ] || [ ! -x "$vendor/build-mosquitto-2.1.sh" ]; then
    echo "interop: no Mosquitto 2.1: set MOSQUITTO_21=/path/to/mosquitto, or pass the folder" >&2
    echo "         holding build-mosquitto-2.1.sh and the 2.1 source (e.g. ../shared/vendor)" >&2
    exit 2
  fi
  MOSQUITTO_21=$("$vendor/build-mosquitto-2.1.sh" "$PWD/target/mosquitto-2.1" | tail -n 1)
fi
version=$("$MOSQUITTO_21" -h 2>&1 | grep -o "mosquitto version [0-9.]*" | head -n 1 || true)
case "$version" in
  "mosquitto version 2.1"*) echo "interop: $version ($MOSQUITTO_21)" ;;
  *) echo "interop: $MOSQUITTO_21 is not Mosquitto 2.1 (${version:-no version})" >&2; exit 2 ;;
esac
export MOSQUITTO_21
cargo test --locked --features interop --test interop_mosquitto21
