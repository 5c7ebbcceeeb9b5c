#!/usr/bin/env bash
# The demo: builds mqttgate, writes a demo PKI and configuration under certs/demo, starts
# Mosquitto on loopback and mqttgate in front of it, shows clients accepted and refused,
# then keeps running until Ctrl-C. Ports: MQTTGATE_DEMO_PORT (8883), MQTTGATE_DEMO_ADMIN
# (9090), MQTTGATE_DEMO_BROKER (18830).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_rust
ensure_packages

PORT=${MQTTGATE_DEMO_PORT:-8883}
ADMIN=${MQTTGATE_DEMO_ADMIN:-9090}
BROKER=${MQTTGATE_DEMO_BROKER:-18830}
DIR=certs/demo

echo "== building mqttgate (release)"
cargo build --release --quiet --locked -p mqttgate
BIN=target/release/mqttgate

rm -rf "$DIR"
"$BIN" certs demo "$DIR" --listen-port "$PORT" --admin-port "$ADMIN" --broker-port "$BROKER"
# Back-end services inside the pod reach the broker on loopback without a username; let
# them read every device's topics (devices reach it only through mqttgate, always with one).
printf 'topic read devices/#\n\npattern readwrite devices/%%u/#\n' > "$DIR/acl"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "stopping"; exit 0' INT TERM

mosquitto -c "$DIR/mosquitto.conf" 2>"$DIR/mosquitto.log" &
pids+=($!)
"$BIN" run --config "$DIR/mqttgate.toml" 2>"$DIR/mqttgate.log" &
pids+=($!)

for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$BROKER") 2>/dev/null; then break; fi
  sleep 0.1
done

tls=(-h localhost -p "$PORT" --cafile "$DIR/server-ca.pem")
client() { echo --cert "$DIR/clients/$1.pem" --key "$DIR/clients/$1.key"; }

echo
echo "== a back-end subscriber on the broker's loopback port: mosquitto_sub -t 'devices/#'"
mosquitto_sub -h 127.0.0.1 -p "$BROKER" -t 'devices/#' -v -C 3 -W 20 > "$DIR/received.txt" &
sub=$!
sleep 0.5

echo
echo "== accepted: sensor-subject (username = its CN) publishes to devices/sensor-subject/temp"
mosquitto_pub "${tls[@]}" $(client sensor-subject) -u sensor-subject -t devices/sensor-subject/temp -m 21.5 -q 1 && echo "   published"
echo "== accepted: sensor-dns sends no username; its DNS SAN names it (alternative sources)"
mosquitto_pub "${tls[@]}" $(client sensor-dns) -V mqttv5 -t devices/sensor-dns.devices.example.com/temp -m 19.0 -q 1 && echo "   published"
echo "== accepted: legacy-gw, a self-signed certificate registered by thumbprint"
mosquitto_pub "${tls[@]}" $(client legacy-gw) -u legacy-gw -t devices/legacy-gw/status -m online -q 1 && echo "   published"
wait "$sub" || true
echo "== what the back end received:"
sed 's/^/   /' "$DIR/received.txt"

echo
echo "== refused: disabled-device (registered, state Disabled), MQTT 3.1.1"
mosquitto_pub "${tls[@]}" $(client disabled-device) -u disabled-device -t devices/disabled-device/x -m hi 2>&1 | sed 's/^/   /' || true
echo "== refused: sensor-subject's certificate claiming to be sensor-dns, MQTT 5"
mosquitto_pub "${tls[@]}" $(client sensor-subject) -V mqttv5 -u sensor-dns.devices.example.com -t x -m hi 2>&1 | sed 's/^/   /' || true

echo
echo "== mqttgate's decisions (audit log):"
grep 'authentication decision' "$DIR/mqttgate.log" \
  | grep -o 'result="[a-z]*" reason="[a-z_]*"\|authentication_name="[^"]*"' | paste - - | sed 's/^/   /' || true
echo
echo "mqttgate is listening on port $PORT; metrics: curl http://127.0.0.1:$ADMIN/metrics, readiness: /readyz."
echo "Logs: $DIR/mqttgate.log, $DIR/mosquitto.log. Press Ctrl-C to stop."
while true; do sleep 3600 & wait $!; done
