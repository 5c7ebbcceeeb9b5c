# Sourced by the other scripts: installs what mqttgate's demo and tests need when it is
# missing. Debian/Ubuntu packages via apt-get (as root, or with sudo), paho-mqtt via pip.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

ensure_packages() {
  local missing=()
  have mosquitto || missing+=(mosquitto)
  have mosquitto_pub || missing+=(mosquitto-clients)
  have openssl || missing+=(openssl)
  have curl || missing+=(curl)
  have haproxy || missing+=(haproxy)
  # ss and prlimit: tests/storm_limits.rs reads the backlog and open-files limit with them.
  have ss || missing+=(iproute2)
  have prlimit || missing+=(util-linux)
  # MQTT.js (tests/websocket.rs) runs on Node; npm installs it into tests/js.
  have node || missing+=(nodejs)
  have npm || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # The Debian package may start a system-wide broker; mqttgate's scripts never use it.
  export PATH="$PATH:/usr/sbin"
}

ensure_paho() {
  # PyJWT (with cryptography) mints the tokens of tests/jwt.rs.
  if ! python3 -c "import paho.mqtt.client, jwt, cryptography" 2>/dev/null; then
    echo "installing paho-mqtt and PyJWT (tests/requirements.txt)" >&2
    python3 -m pip install --quiet -r tests/requirements.txt
  fi
}

# MQTT.js, pinned by tests/js/package-lock.json, into tests/js/node_modules; npm's cache
# stays inside the repository (target/npm-cache).
ensure_mqttjs() {
  if [ ! -d tests/js/node_modules/mqtt ]; then
    echo "installing MQTT.js (tests/js/package-lock.json)" >&2
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error --cache ../../target/npm-cache)
  fi
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || {
    echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
    exit 1
  }
}
