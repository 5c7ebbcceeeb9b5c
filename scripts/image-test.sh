#!/usr/bin/env bash
# Builds the container image's runtime stage from a static binary built on this host and
# proves the image works: mqttgate starts in the empty image as 65532:65532, answers
# /healthz, and proxies a real mosquitto_pub (client certificate, MQTT 3.1.1 and 5) to a
# real Mosquitto on the host's loopback; a refused client gets its CONNACK.
#
# Not part of scripts/test.sh (the static release build alone takes minutes on a clean
# tree); .ci/run runs it after the tests. By hand:   scripts/image-test.sh
#
# Uses buildah (installed with apt-get when missing) with --storage-driver vfs and
# --isolation chroot, which work without a container engine or a registry: the runtime
# stage is FROM scratch, so nothing is pulled. Environment: IMAGE (default mqttgate:test).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_rust
ensure_packages
if ! command -v buildah >/dev/null; then
  echo "installing buildah" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi
command -v buildah >/dev/null || { echo "FAIL: buildah is not installed and could not be installed" >&2; exit 1; }

IMAGE=${IMAGE:-mqttgate:test}
TARGET=x86_64-unknown-linux-gnu
BIN=target/$TARGET/release/mqttgate
# Image storage lives under target/, so a run leaves nothing behind outside the repository.
STORE="$PWD/target/buildah"
B=(buildah --storage-driver vfs --root "$STORE/storage" --runroot "$STORE/run")

echo "== static build ($BIN)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$TARGET" --bin mqttgate
# A static(-pie) binary has no program interpreter and needs no shared library.
if readelf -l "$BIN" | grep -q INTERP || readelf -d "$BIN" | grep -q NEEDED; then
  echo "FAIL: $BIN is dynamically linked" >&2
  exit 1
fi

echo "== buildah bud --target runtime-prebuilt"
start=$(date +%s)
"${B[@]}" bud --isolation chroot --target runtime-prebuilt --build-arg "BINARY=$BIN" \
  --layers=false -t "$IMAGE" -f Dockerfile . >/dev/null
echo "   built in $(( $(date +%s) - start )) s"
"${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE"

echo "== buildah run (chroot isolation, the image's user): mqttgate --version"
smoke=$("${B[@]}" from "$IMAGE")
"${B[@]}" run --isolation chroot "$smoke" -- /mqttgate --version
"${B[@]}" rm "$smoke" >/dev/null

work=$(mktemp -d)
ctr=""
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$ctr" ]; then
    umount -R "$work/root" 2>/dev/null || true
    "${B[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
PORT=$(free_port); ADMIN=$(free_port); BROKER=$(free_port)

echo "== demo PKI and config (mqttgate :$PORT, admin :$ADMIN, Mosquitto :$BROKER on the host)"
"$BIN" certs demo "$work/etc" --listen-port "$PORT" --admin-port "$ADMIN" --broker-port "$BROKER" >/dev/null
# A subscriber on the broker's loopback port (no username) reads every device's topics;
# devices reach the broker only through mqttgate, always with their identity as username.
printf 'topic read devices/#\n\npattern readwrite devices/%%u/#\n' > "$work/etc/acl"
# The image runs as 65532, and Mosquitto drops to its own user: let both read the files.
chmod 755 "$work" "$work/etc"
chown -R 65532:65532 "$work/etc"
chmod 644 "$work/etc/acl"

mosquitto -c "$work/etc/mosquitto.conf" 2>"$work/mosquitto.log" &
pids+=($!)
wait_port "$BROKER" || { cat "$work/mosquitto.log"; echo "FAIL: mosquitto did not start" >&2; exit 1; }

# The container's root filesystem is mounted read-only and the demo folder bind-mounted
# read-only at /etc/mqttgate: what Kubernetes does with readOnlyRootFilesystem and a
# ConfigMap/Secret mount. `buildah run` has no read-only root, so the binary runs from the
# mounted image with chroot, as the image's user (chroot --userspec: no capabilities left).
ctr=$("${B[@]}" from "$IMAGE")
mnt=$("${B[@]}" mount "$ctr")
mkdir -p "$mnt/etc/mqttgate" "$work/root"
mount --bind "$mnt" "$work/root"
mount -o remount,bind,ro "$work/root"
mount --bind "$work/etc" "$work/root/etc/mqttgate"
mount -o remount,bind,ro "$work/root/etc/mqttgate"
if touch "$work/root/probe" 2>/dev/null; then
  echo "FAIL: the root filesystem is writable" >&2
  exit 1
fi
user=$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[ "$user" = "65532:65532" ] || { echo "FAIL: image user is $user" >&2; exit 1; }

echo "== mqttgate from the image: chroot (read-only root) as $user, the image's ENTRYPOINT and CMD"
chroot --userspec="$user" --groups="${user#*:}" "$work/root" /mqttgate run --config /etc/mqttgate/mqttgate.toml 2>"$work/mqttgate.log" &
pids+=($!)
# The chroot holds the mount busy until mqttgate stops; cleanup kills it first.
wait_port "$ADMIN" && wait_port "$PORT" || { cat "$work/mqttgate.log"; echo "FAIL: mqttgate did not start" >&2; exit 1; }

health=$(curl -fsS "http://127.0.0.1:$ADMIN/healthz")
echo "   /healthz: $health"
[ "$health" = "ok" ] || { echo "FAIL: /healthz" >&2; exit 1; }
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { echo "FAIL: /readyz" >&2; exit 1; }
echo "   /readyz: 200"

tls=(-h localhost -p "$PORT" --cafile "$work/etc/server-ca.pem")
client() { echo --cert "$work/etc/clients/$1.pem" --key "$work/etc/clients/$1.key"; }

echo "== a real client through the image's mqttgate to Mosquitto"
mosquitto_sub -h 127.0.0.1 -p "$BROKER" -t 'devices/#' -v -C 2 -W 15 >"$work/received" &
sub=$!
sleep 0.5
mosquitto_pub "${tls[@]}" $(client sensor-subject) -u sensor-subject -t devices/sensor-subject/t -m v311 -q 1
mosquitto_pub "${tls[@]}" $(client sensor-dns) -V mqttv5 -t devices/sensor-dns.devices.example.com/t -m v5 -q 1
wait "$sub" || true
cat "$work/received" | sed 's/^/   received: /'
grep -qx 'devices/sensor-subject/t v311' "$work/received" || { echo "FAIL: the v3.1.1 message did not arrive" >&2; exit 1; }
grep -qx 'devices/sensor-dns.devices.example.com/t v5' "$work/received" || { echo "FAIL: the v5 message did not arrive" >&2; exit 1; }

echo "== a disabled client is refused with CONNACK 0x05 / 0x87"
out=$(mosquitto_pub "${tls[@]}" $(client disabled-device) -u disabled-device -t x -m no 2>&1 || true)
echo "   v3.1.1: $out"
echo "$out" | grep -qi 'not authori' || { echo "FAIL: v3.1.1 refusal" >&2; exit 1; }
out=$(mosquitto_pub "${tls[@]}" $(client disabled-device) -V mqttv5 -u disabled-device -t x -m no 2>&1 || true)
echo "   v5: $out"
echo "$out" | grep -qi 'not authori' || { echo "FAIL: v5 refusal" >&2; exit 1; }

echo "image test passed: $IMAGE"
