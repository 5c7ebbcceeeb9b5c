#!/usr/bin/env bash
# Repeatable cost check: instruction counts (valgrind callgrind) of
#  (a) the per-connection path: parse a CONNECT + auth::decide, with 1,000 and 100,000
#      registered clients (the lookup must not grow with the registry), and
#  (b) the relay of one 64-byte message: mqttgate's relay step, and the TLS record work
#      (decrypt one record in, encrypt one out) rustls does for it.
# Usage: scripts/cost.sh [ITERATIONS]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${1:-200}"
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 1; }
cargo build --release --quiet --locked --example cost
bin=target/release/examples/cost
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Inclusive instructions of one function, divided by the iterations.
measure() { # clients function
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1.$2" \
    --toggle-collect="*$2*" "$bin" "$1" "$iters" >/dev/null 2>"$out/log.$1.$2"
  local total
  total=$(grep -E '^(summary|totals):' "$out/cg.$1.$2" | head -1 | awk '{print $2}')
  echo $(( total / iters ))
}

printf '%-52s %14s\n' "measured (per operation)" "instructions"
a1=$(measure 1000 measured_connect_path)
a2=$(measure 100000 measured_connect_path)
b1=$(measure 1000 measured_relay_plain)
b2=$(measure 1000 measured_relay_tls)
printf '%-52s %14s\n' "CONNECT parse + decide, 1,000 clients" "$a1"
printf '%-52s %14s\n' "CONNECT parse + decide, 100,000 clients" "$a2"
printf '%-52s %14s\n' "relay of one 64-byte message (relay.rs)" "$b1"
printf '%-52s %14s\n' "TLS for it: decrypt one record + encrypt one record" "$b2"
ratio=$(awk -v a="$a1" -v b="$a2" 'BEGIN { printf "%.3f", b / a }')
echo "100k/1k ratio: $ratio (O(1) lookup: about 1)"
awk -v r="$ratio" 'BEGIN { exit !(r < 1.2 && r > 0.8) }' \
  || { echo "registry lookup cost grows with the number of clients" >&2; exit 1; }
