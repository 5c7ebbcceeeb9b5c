#!/usr/bin/env bash
# The benchmark, in one command: builds mqttgate and its load generator (release), starts
# Mosquitto (plain and native mutual TLS), mqttgate, HAProxy and stunnel side by side on
# loopback with the same P-256 certificates, runs every scenario against every setup,
# interleaved, BENCH_ROUNDS times (default 5), and writes the medians, the target checks
# and a chart to docs/benchmarks.md and docs/benchmarks.png. About 10 minutes on 2 cores.
#
# Knobs (environment): BENCH_ROUNDS, BENCH_SECONDS (per measurement, default 2),
# BENCH_IDLE_COUNTS (default 1000,5000), BENCH_ONLY (e.g. "storm,idle"), BENCH_OUT,
# BENCH_RECONNECT_CLIENTS (default 2000), MQTTGATE_BASE (an older mqttgate binary, run beside
# this build on the same load: storm CPU, relay CPU and idle KiB before/after, with ratios).
#
# `scripts/bench.sh storm-reconnect` runs only the reconnect storm (N clients at once, time
# until all are admitted, mqttgate vs Mosquitto native TLS) and prints it; about a minute.
set -euo pipefail
if [ "${1:-}" = storm-reconnect ]; then
  export BENCH_ONLY=reconnect
fi
cd "$(dirname "$0")/.."

# `scripts/bench.sh registry`: only the registry memory scenario (well under a minute once
# built): a generated 100,000-client registry loaded, then reloaded 10 times as a reload
# does; prints live data, RSS at rest, peak during a reload, after reloads 1 and 10, load time.
if [ "${1:-}" = registry ]; then
  exec cargo run --release --quiet --example registry_memory -- "${2:-100000}"
fi

# `scripts/bench.sh watch [CLIENTS]`: the reload watcher's idle cost: mqttgate with a
# generated 100,000-client registry and a 500 ms watch interval, no traffic; prints the CPU
# it used as a percentage of one core (MQTTGATE_BASE=/path/to/older/mqttgate compares).
if [ "${1:-}" = watch ]; then
  cargo build --release --quiet --locked -p mqttgate
  exec python3 scripts/watch-idle.py target/release/mqttgate "${2:-100000}"
fi

# `scripts/bench.sh authz`: the small-message relay with topic-space authorization off
# and on (two mqttgates in front of one Mosquitto, interleaved): mqttgate's CPU per
# message for both and the ratio (budget 1.15). Needs only Mosquitto and Python.
if [ "${1:-}" = authz ]; then
  export PATH="$PATH:/usr/sbin"
  cargo build --release --quiet --locked -p mqttgate -p mqttgate-load
  echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  exec timeout 600 python3 scripts/bench_authz.py
fi

need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v stunnel >/dev/null || need+=(stunnel4)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
  else
    echo "missing: ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi
export PATH="$PATH:/usr/sbin"

# Idle connections: the load generator holds N sockets and a proxy 2N; raise the soft
# open-files limit to the hard one (20,000 on the machines this was written on).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard"

cargo build --release --quiet --locked -p mqttgate -p mqttgate-load
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
exec timeout 900 python3 scripts/bench.py
