#!/usr/bin/env bash
# Validates deploy/: every Kubernetes manifest against the Kubernetes JSON schemas
# (PyPI kubernetes-validate, pinned below, strict mode, the oldest Kubernetes with native
# sidecars and the newest schema it ships), the CRD-based PodMonitor by YAML parse and
# checks of its own, the Grafana dashboard's JSON and metric names, the Mosquitto config by
# starting Mosquitto with it, and the shipped mqttgate.toml + clients.json with
# `mqttgate check` against a generated PKI.
#
# Installs what it needs when missing (kubernetes-validate into a venv under target/,
# Mosquitto with apt-get) and fails, never skips, when a tool can't be had.
# Environment: MQTTGATE_BIN (default: build target/debug/mqttgate), KUBERNETES_VALIDATE_VENV.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

KV_VERSION=1.37.0                 # kubernetes-validate, pinned
K8S_VERSIONS=(1.29.0 1.37.0)      # native sidecars need >= 1.29
venv="${KUBERNETES_VALIDATE_VENV:-$root/target/deploy-venv}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

# --- tools -------------------------------------------------------------------------
if [ ! -x "$venv/bin/kubernetes-validate" ] || \
   [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KV_VERSION" ]; then
  step "installing kubernetes-validate==$KV_VERSION into $venv"
  python3 -m venv "$venv" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet "kubernetes-validate==$KV_VERSION" || fail "pip install kubernetes-validate==$KV_VERSION failed"
fi
py="$venv/bin/python"
"$py" -c 'import yaml' || fail "PyYAML missing from $venv"

export PATH="$PATH:/usr/sbin"
if ! command -v mosquitto >/dev/null; then
  step "installing mosquitto"
  if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
  "${as_root[@]}" apt-get update -qq || true
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null || true
  command -v mosquitto >/dev/null || fail "mosquitto is not installed and could not be installed"
fi

bin="${MQTTGATE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin mqttgate
  bin="$root/target/debug/mqttgate"
fi
[ -x "$bin" ] || fail "no mqttgate binary at $bin"

# --- render ------------------------------------------------------------------------
# The demo overlay needs generated/ files; render it from a copy so the tree stays clean.
cp -r deploy "$work/deploy"
"$bin" certs demo "$work/pki" >/dev/null
mkdir -p "$work/deploy/overlays/demo/generated"
cp "$work/pki/server.pem" "$work/pki/server.key" "$work/pki/devices-ca.pem" "$work/pki/clients.json" \
   "$work/deploy/overlays/demo/generated/"

manifests=()
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  step "rendering with kubectl kustomize"
  kubectl kustomize "$work/deploy/base" > "$work/base.yaml"
  kubectl kustomize "$work/deploy/overlays/demo" > "$work/demo.yaml"
  kubectl kustomize "$work/deploy/overlays/load-balancer-proxy" > "$work/lb.yaml"
  manifests=("$work/base.yaml" "$work/demo.yaml" "$work/lb.yaml")
elif command -v kustomize >/dev/null; then
  step "rendering with kustomize"
  kustomize build "$work/deploy/base" > "$work/base.yaml"
  kustomize build "$work/deploy/overlays/demo" > "$work/demo.yaml"
  kustomize build "$work/deploy/overlays/load-balancer-proxy" > "$work/lb.yaml"
  manifests=("$work/base.yaml" "$work/demo.yaml" "$work/lb.yaml")
else
  step "no kubectl/kustomize: validating the resource files one by one (generated ConfigMaps and Secret not rendered)"
  "$py" - "$root/deploy/base/kustomization.yaml" <<'PY'
import os, sys, yaml
k = yaml.safe_load(open(sys.argv[1]))
base = os.path.dirname(sys.argv[1])
for g in k.get("configMapGenerator", []):
    for f in g["files"]:
        p = os.path.join(base, f.split("=")[-1])
        assert os.path.isfile(p), f"configMapGenerator file missing: {p}"
PY
  manifests+=("$root/deploy/overlays/load-balancer-proxy/networkpolicy-health-checks.yaml")
  while read -r r; do manifests+=("$root/deploy/base/$r"); done < <(
    "$py" -c 'import sys,yaml; [print(r) for r in yaml.safe_load(open(sys.argv[1]))["resources"]]' deploy/base/kustomization.yaml)
fi

# --- schemas -----------------------------------------------------------------------
# kubernetes-validate has no schema for CRDs: split them out and check them below.
"$py" - "$work" "${manifests[@]}" <<'PY'
import sys, yaml
work, files = sys.argv[1], sys.argv[2:]
core, crd = [], []
for f in files:
    for d in yaml.safe_load_all(open(f)):
        if d:
            (crd if d["apiVersion"].startswith("monitoring.coreos.com/") else core).append(d)
yaml.safe_dump_all(core, open(f"{work}/core.yaml", "w"))
yaml.safe_dump_all(crd, open(f"{work}/crd.yaml", "w"))
print(f"{len(core)} core resources, {len(crd)} prometheus-operator resources")
PY
for v in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict -k $v"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$work/core.yaml" || fail "schema validation against Kubernetes $v"
done

# --- checks the schemas can't make -------------------------------------------------
step "PodMonitor (CRD: YAML parse and cross-checks only), Deployment wiring"
"$py" - "$work/core.yaml" "$work/crd.yaml" <<'PY'
import sys, yaml
core = list(yaml.safe_load_all(open(sys.argv[1])))
crd = list(yaml.safe_load_all(open(sys.argv[2])))
def one(kind):
    found = [d for d in core if d["kind"] == kind]
    assert found, f"no {kind}"
    return found[0]
dep = one("Deployment")
pod = dep["spec"]["template"]["spec"]
labels = dep["spec"]["template"]["metadata"]["labels"]
sidecar = [c for c in pod["initContainers"] if c["name"] == "mqttgate"][0]
assert sidecar.get("restartPolicy") == "Always", "mqttgate must be a native sidecar"
ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
assert ports == {"mqtts": 8883, "mqtt-ws": 8443, "admin": 9090}, ports
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    g = sidecar[probe]["httpGet"]
    assert (g["path"], g["port"]) == (path, "admin"), (probe, g)
sc = pod["securityContext"]
assert sc["runAsNonRoot"] and sc["runAsUser"] == 65532 and sc["seccompProfile"]["type"] == "RuntimeDefault"
for c in pod["initContainers"] + pod["containers"]:
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] and csc["capabilities"]["drop"] == ["ALL"], c["name"]
    assert "resources" in c, c["name"]
assert pod["terminationGracePeriodSeconds"] > 20 + 10, "grace must exceed drain_timeout_ms + close time"
svc = one("Service")
assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8883, "mqtts"), (443, "mqtt-ws")], \
    "the Service exposes 8883 and 443 (WebSockets) only"
for sel in (svc["spec"]["selector"], one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
    assert all(labels.get(k) == v for k, v in sel.items()), sel
vols = {v["name"]: v for v in pod["volumes"]}
assert vols["mqttgate-tls"]["secret"]["secretName"].startswith("mqttgate-tls")
assert crd, "no PodMonitor"
for pm in crd:
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1", pm
    sel = pm["spec"]["selector"]["matchLabels"]
    assert all(labels.get(k) == v for k, v in sel.items()), sel
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics", ep
secrets = [d for d in core if d["kind"] == "Secret"]
for s in secrets:
    assert set(s["data"]) == {"server.pem", "server.key", "devices-ca.pem"}, set(s["data"])
print(f"ok ({len(secrets)} generated Secret(s) checked)")
PY

step "Grafana dashboard: JSON, and every metric it queries exists in src/metrics.rs"
"$py" - deploy/base/files/mqttgate-dashboard.json src/metrics.rs <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
src = open(sys.argv[2]).read()
registered = set(re.findall(r'register(?:_with_unit)?\(\s*"([a-z_]+)"', src))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "no queries"
missing = set()
for name in set(re.findall(r"mqttgate_[a-z_]+", " ".join(exprs))):
    stem = name[len("mqttgate_"):]
    for suffix in ("_bucket", "_count", "_sum", "_total", "_seconds", "_bytes"):
        if stem not in registered and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem not in registered:
        missing.add(name)
assert not missing, f"dashboard queries metrics mqttgate does not export: {sorted(missing)}"
print(f"ok ({len(exprs)} queries)")
PY

# --- mqttgate check on the shipped config and registry -----------------------------
step "mqttgate check deploy/base/files/mqttgate.toml (paths rewritten to a generated PKI)"
mkdir -p "$work/etc/config" "$work/etc/tls"
cp deploy/base/files/clients.json "$work/etc/config/"
cp "$work/pki/server.pem" "$work/pki/server.key" "$work/pki/devices-ca.pem" "$work/etc/tls/"
sed -e "s|/etc/mqttgate/config/|$work/etc/config/|g" -e "s|/etc/mqttgate/tls/|$work/etc/tls/|g" \
  deploy/base/files/mqttgate.toml > "$work/etc/config/mqttgate.toml"
if grep -v '^[[:space:]]*#' "$work/etc/config/mqttgate.toml" | grep -q '/etc/mqttgate/'; then
  fail "mqttgate.toml names a path outside /etc/mqttgate/config/ and /etc/mqttgate/tls/"
fi
"$bin" check --config "$work/etc/config/mqttgate.toml" || fail "mqttgate check refused deploy/base/files"
step "mqttgate check with the demo overlay's registry"
cp "$work/pki/clients.json" "$work/etc/config/clients.json"
"$bin" check --config "$work/etc/config/mqttgate.toml" >/dev/null || fail "mqttgate check refused the demo registry"

step "load-balancer-proxy overlay: the Service is a LoadBalancer, both listeners require PROXY v2"
if [ -f "$work/lb.yaml" ]; then
  "$py" - "$work/lb.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
svc = [d for d in docs if d["kind"] == "Service"][0]
assert svc["spec"]["type"] == "LoadBalancer", svc["spec"]
assert svc["spec"]["externalTrafficPolicy"] == "Local", svc["spec"]
assert [p["port"] for p in svc["spec"]["ports"]] == [8883, 443], svc["spec"]["ports"]
cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mqttgate-config")][0]
toml = cm["data"]["mqttgate.toml"]
assert toml.count('proxy_protocol = "required"') == 2, "both listeners require the header"
assert "clients.json" in cm["data"], "the base's registry is kept"
print("ok")
PY
else
  echo "(not rendered without kubectl/kustomize; its mqttgate.toml is checked below)"
fi
sed -e "s|/etc/mqttgate/config/|$work/etc/config/|g" -e "s|/etc/mqttgate/tls/|$work/etc/tls/|g" \
  deploy/overlays/load-balancer-proxy/mqttgate.toml > "$work/etc/config/mqttgate-lb.toml"
cp deploy/base/files/clients.json "$work/etc/config/clients.json"
"$bin" check --config "$work/etc/config/mqttgate-lb.toml" > "$work/lb-check.txt" || fail "mqttgate check refused the overlay's mqttgate.toml"
grep -q "MQTT over TLS.*PROXY v2" "$work/lb-check.txt" && grep -q "WebSockets.*PROXY v2" "$work/lb-check.txt" \
  || { cat "$work/lb-check.txt" >&2; fail "the overlay's listeners do not both require PROXY v2"; }

# --- mosquitto.conf ---------------------------------------------------------------
step "Mosquitto starts with deploy/base/files/mosquitto.conf (port and ACL path rewritten)"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cp deploy/base/files/acl "$work/acl"
# Started as root, Mosquitto drops to the mosquitto user, which must read the ACL.
chmod 755 "$work"
chmod 644 "$work/acl"
sed -e "s|^listener 1883 127.0.0.1$|listener $port 127.0.0.1|" -e "s|/mosquitto/config/acl|$work/acl|" \
  deploy/base/files/mosquitto.conf > "$work/mosquitto.conf"
grep -q "listener $port 127.0.0.1" "$work/mosquitto.conf" || fail "mosquitto.conf must listen on 127.0.0.1:1883 only"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
up=""
for _ in $(seq 1 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
  kill -0 "${pids[-1]}" 2>/dev/null || break
  sleep 0.1
done
[ -n "$up" ] || { cat "$work/mosquitto.log" >&2; fail "mosquitto did not start with the shipped config"; }
echo "ok"
echo "deploy/ is valid"
