#!/usr/bin/env bash
# Writes generated/ for the demo overlay: mqttgate's server certificate and key, the
# devices CA, the demo registry, and the demo clients' certificates and keys (to connect
# with). Uses MQTTGATE_BIN, else target/release/mqttgate, else builds it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin="${MQTTGATE_BIN:-$root/target/release/mqttgate}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --quiet)
fi
out="$here/generated"
rm -rf "$out"
"$bin" certs demo "$out" >/dev/null
# The demo's own config files are for running on a host; the overlay uses the base's.
rm -f "$out/mqttgate.toml" "$out/mosquitto.conf" "$out/acl"
echo "wrote $out; try it with: kubectl port-forward svc/mqttgate 8883:8883, then connect to localhost (the demo server certificate names localhost only)"
