#!/usr/bin/env python3
"""Side-by-side benchmark of mqttgate against Mosquitto plain, Mosquitto native TLS, HAProxy
and stunnel, all on loopback with the same P-256 certificates. Run through scripts/bench.sh,
which builds the binaries and checks the tools first.

Every scenario runs against every setup, interleaved, ROUNDS times; medians and ratios go to
docs/benchmarks.md (between the generated-section markers) and a chart to
docs/benchmarks.png. Every wait is bounded; the whole run has a deadline.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("BENCH_BIN", ROOT / "target" / "release"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECS = float(os.environ.get("BENCH_SECONDS", "2"))
IDLE_COUNTS = os.environ.get("BENCH_IDLE_COUNTS", "1000,5000")
RECONNECT_CLIENTS = int(os.environ.get("BENCH_RECONNECT_CLIENTS", "2000"))
DEADLINE = time.monotonic() + float(os.environ.get("BENCH_DEADLINE", "570"))
LOAD_START = os.getloadavg()[0]
STARTED = time.monotonic()
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))  # e.g. "relay,idle"
OUT_MD = Path(os.environ.get("BENCH_OUT", ROOT / "docs" / "benchmarks.md"))
OUT_PNG = OUT_MD.with_suffix(".png")

# Every terminator negotiates the same TLS 1.3 suite, the one mqttgate prefers, so the
# comparison is of implementations and not of default suite orders (OpenSSL's and rustls'
# defaults pick AES-256-GCM-SHA384 with this client).
SUITE_OPENSSL = "TLS_AES_128_GCM_SHA256"
TLS_TARGETS = ["mqttgate", "mosquitto-tls", "haproxy", "stunnel"]
TARGETS = ["plain"] + TLS_TARGETS
# mqttgate's other paths, compared with its TLS listener: the WebSocket listener (same
# process), and PROXY v2 towards a Mosquitto 2.1 (a second mqttgate; only when a 2.1 binary
# is at hand: BENCH_MOSQUITTO_21, or the one scripts/interop.sh built under target/).
MOSQUITTO_21 = os.environ.get("BENCH_MOSQUITTO_21") or (
    str(ROOT / "target" / "mosquitto-2.1" / "mosquitto")
    if (ROOT / "target" / "mosquitto-2.1" / "mosquitto").exists()
    else None
)
PATH_TARGETS = ["mqttgate-ws"] + (["mqttgate-proxy", "mosquitto21-ws"] if MOSQUITTO_21 else [])
# JWT clients (no client certificate, a CUSTOM-JWT token in the CONNECT) on mqttgate's TLS
# listener, against certificate clients: storm CPU per connection.
STORM_ONLY = ["mqttgate-jwt"]
# An older mqttgate build beside this one, same configuration and clients, for before/after
# figures from one run (MQTTGATE_BASE=/path/to/older/mqttgate): storm CPU, relay CPU and
# idle memory, with the ratios this build / that build.
BASE = os.environ.get("MQTTGATE_BASE")
BASE_TARGETS = ["mqttgate-base"] if BASE else []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, limit=10.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start (code {proc.returncode}); see its log in the work folder")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not open port {port}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - informational only
        return f"unknown ({e})"


class Setups:
    """The five setups: one Mosquitto (plain and native-TLS listeners) and three
    terminators in front of its plain listener."""

    def __init__(self, work: Path):
        self.work = work
        self.procs = {}
        pki = work / "pki"
        run([str(BIN / "mqttgate"), "certs", "demo", str(pki)])
        for f in pki.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
        self.pki = pki
        # The client sends its leaf and the intermediate; every terminator trusts the root.
        (work / "chain.pem").write_text(
            (pki / "clients" / "sensor-subject.pem").read_text() + (pki / "devices-ca.pem").read_text()
        )
        (work / "haproxy.pem").write_text((pki / "server.pem").read_text() + (pki / "server.key").read_text())
        self.make_jwt()
        self.port = {t: free_port() for t in TARGETS + PATH_TARGETS + BASE_TARGETS + ["mosquitto21", "mosquitto21-ws"]}

    def make_jwt(self):
        """An RS256 issuer key (its certificate is mqttgate's key file, kid = file stem) and
        one token for the whole load, signed with openssl: no JWT library in the bench."""
        import base64
        keys = self.work / "jwt-keys"
        keys.mkdir()
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-issuer",
             "-keyout", str(self.work / "issuer.key"), "-out", str(keys / "k1.pem")])
        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        claims = b64(json.dumps({"iss": "bench", "aud": "mqttgate", "sub": "sensor-subject",
                                 "exp": int(time.time()) + 86400}).encode())
        signing_input = header + b"." + claims
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.work / "issuer.key")],
                             input=signing_input, capture_output=True, check=True).stdout
        (self.work / "token").write_bytes(signing_input + b"." + b64(sig))

    def start_mosquitto(self):
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"""allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
listener {self.port['plain']} 127.0.0.1
listener {self.port['mosquitto-tls']} 127.0.0.1
cafile {self.pki}/root-ca.pem
certfile {self.pki}/server.pem
keyfile {self.pki}/server.key
require_certificate true
use_identity_as_username true
ciphers_tls1.3 {SUITE_OPENSSL}
"""
        )
        self._spawn("mosquitto", ["mosquitto", "-c", str(conf)], self.port["plain"])
        wait_port(self.port["mosquitto-tls"], self.procs["mosquitto"], "mosquitto")

    def start_mqttgate(self):
        conf = self.work / "mqttgate.toml"
        conf.write_text(
            f"""listen = "127.0.0.1:{self.port['mqttgate']}"
alternativeAuthenticationNameSources = ["ClientCertificateSubject"]
[tls]
certificate = "{self.pki}/server.pem"
private_key = "{self.pki}/server.key"
ca_certificates = ["{self.pki}/root-ca.pem"]
[registry]
clients = "{self.pki}/clients.json"
[upstream]
address = "127.0.0.1:{self.port['plain']}"
username = "rewrite"
client_id = "per-identity"
[admin]
listen = "127.0.0.1:0"
[limits]
max_connections = 12000
[auth.jwt]
issuer = "bench"
audiences = ["mqttgate"]
keys = ["{self.work}/jwt-keys"]
[sessions]
# One identity stands for the whole load: no per-identity session limit or connect rate.
max_per_authentication_name = 0
connects_per_second = 0
[websocket]
listen = "127.0.0.1:{self.port['mqttgate-ws']}"
"""
        )
        env = dict(os.environ, RUST_LOG="warn")
        self._spawn("mqttgate", [str(BIN / "mqttgate"), "run", "--config", str(conf)], self.port["mqttgate"], env=env)

    def start_mosquitto21(self):
        """Mosquitto 2.1 taking the identity from mqttgate's PROXY v2 header."""
        conf = self.work / "mosquitto21.conf"
        conf.write_text(
            f"""per_listener_settings true
persistence false
log_dest stderr
log_type error
max_connections -1
listener {self.port['mosquitto21']} 127.0.0.1
enable_proxy_protocol 2
require_certificate true
use_identity_as_username true
allow_anonymous true
# Mosquitto 2.1's own WebSocket listener with TLS, to compare mqttgate's with.
listener {self.port['mosquitto21-ws']} 127.0.0.1
protocol websockets
cafile {self.pki}/root-ca.pem
certfile {self.pki}/server.pem
keyfile {self.pki}/server.key
require_certificate true
use_identity_as_username true
allow_anonymous true
ciphers_tls1.3 {SUITE_OPENSSL}
"""
        )
        self._spawn("mosquitto21", [MOSQUITTO_21, "-c", str(conf)], self.port["mosquitto21"])

    def start_mqttgate_proxy(self):
        conf = self.work / "mqttgate-proxy.toml"
        conf.write_text(
            (self.work / "mqttgate.toml").read_text()
            .replace(f"127.0.0.1:{self.port['mqttgate']}", f"127.0.0.1:{self.port['mqttgate-proxy']}")
            .replace(f"127.0.0.1:{self.port['plain']}", f"127.0.0.1:{self.port['mosquitto21']}")
            .replace("[upstream]\n", "[upstream]\nproxy_protocol = \"v2\"\n")
            .replace(f"[websocket]\nlisten = \"127.0.0.1:{self.port['mqttgate-ws']}\"\n", "")
            .split("[auth.jwt]")[0] + "[sessions]\nmax_per_authentication_name = 0\nconnects_per_second = 0\n"
        )
        env = dict(os.environ, RUST_LOG="warn")
        self._spawn("mqttgate-proxy", [str(BIN / "mqttgate"), "run", "--config", str(conf)], self.port["mqttgate-proxy"], env=env)

    def start_mqttgate_base(self):
        """The older build: this build's configuration without the sections it may not know
        (WebSockets, JWT, session limits; it had no session limits to turn off)."""
        conf = self.work / "mqttgate-base.toml"
        text = (self.work / "mqttgate.toml").read_text()
        text = text.replace(f"127.0.0.1:{self.port['mqttgate']}", f"127.0.0.1:{self.port['mqttgate-base']}")
        base = text.split("[auth.jwt]")[0]
        # A base with session limits (their defaults would refuse the load's one identity)
        # takes the same [sessions] as this build; an older one knows no such section.
        sessions = "[sessions]\nmax_per_authentication_name = 0\nconnects_per_second = 0\n"
        conf.write_text(base + sessions)
        check = subprocess.run([BASE, "check", "--config", str(conf)], capture_output=True)
        if check.returncode != 0:
            conf.write_text(base)
        env = dict(os.environ, RUST_LOG="warn")
        self._spawn("mqttgate-base", [BASE, "run", "--config", str(conf)], self.port["mqttgate-base"], env=env)

    def start_haproxy(self):
        conf = self.work / "haproxy.cfg"
        conf.write_text(
            f"""global
    maxconn 9900
    ssl-default-bind-ciphersuites {SUITE_OPENSSL}
    log stderr format raw local0 err
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend mqtts
    bind 127.0.0.1:{self.port['haproxy']} ssl crt {self.work}/haproxy.pem ca-file {self.pki}/root-ca.pem verify required
    default_backend broker
backend broker
    server mosquitto 127.0.0.1:{self.port['plain']}
"""
        )
        self._spawn("haproxy", ["haproxy", "-db", "-f", str(conf)], self.port["haproxy"])

    def start_stunnel(self):
        conf = self.work / "stunnel.conf"
        conf.write_text(
            f"""foreground = yes
pid =
debug = 3
[mqtt]
accept = 127.0.0.1:{self.port['stunnel']}
connect = 127.0.0.1:{self.port['plain']}
cert = {self.pki}/server.pem
key = {self.pki}/server.key
CAfile = {self.pki}/root-ca.pem
verifyChain = yes
requireCert = yes
ciphersuites = {SUITE_OPENSSL}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
        )
        self._spawn("stunnel", ["stunnel", str(conf)], self.port["stunnel"])

    def _spawn(self, name, cmd, port, env=None):
        log = open(self.work / f"{name}.log", "a")
        p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        self.procs[name] = p
        wait_port(port, p, name)

    def start_all(self):
        self.start_mosquitto()
        self.start_mqttgate()
        self.start_haproxy()
        self.start_stunnel()
        if BASE:
            self.start_mqttgate_base()
        if MOSQUITTO_21:
            self.start_mosquitto21()
            self.start_mqttgate_proxy()

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p is None:
            return
        p.send_signal(signal.SIGKILL if name.startswith("mqttgate") else signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def restart(self, name):
        self.stop(name)
        getattr(self, "start_" + name.replace("-tls", "").replace("-", "_"))()

    def pid(self, name):
        return self.procs[name].pid

    # --- what a scenario needs to reach one target ---

    def terminator(self, target):
        return {"plain": "mosquitto", "mosquitto-tls": "mosquitto", "mqttgate-ws": "mqttgate",
                "mqttgate-jwt": "mqttgate", "mosquitto21-ws": "mosquitto21"}.get(target, target)

    def broker(self, target):
        return "mosquitto21" if target in ("mqttgate-proxy", "mosquitto21-ws") else "mosquitto"

    def client_args(self, target, thumbprint=False):
        if target == "mqttgate-jwt":
            return ["--addr", f"127.0.0.1:{self.port['mqttgate']}", "--tls", "--ca", str(self.pki / "root-ca.pem"),
                    "--jwt", str(self.work / "token"), "--pid", f"term={self.pid('mqttgate')}",
                    "--pid", f"broker={self.pid('mosquitto')}"]
        args = ["--addr", f"127.0.0.1:{self.port[target]}"]
        if target in ("mqttgate-ws", "mosquitto21-ws"):
            args += ["--ws", "/mqtt"]
        if target != "plain":
            cert, key = (
                (self.pki / "clients" / "legacy-gw.pem", self.pki / "clients" / "legacy-gw.key")
                if thumbprint
                else (self.work / "chain.pem", self.pki / "clients" / "sensor-subject.key")
            )
            args += ["--tls", "--ca", str(self.pki / "root-ca.pem"), "--cert", str(cert), "--key", str(key)]
        term = self.terminator(target)
        args += ["--pid", f"term={self.pid(term)}", "--pid", f"broker={self.pid(self.broker(target))}"]
        return args


def load(args, limit):
    cmd = [str(BIN / "mqttgate-load")] + args
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": "timeout: " + " ".join(cmd)}
    line = (p.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        r = {"error": f"bad output: {p.stdout[-200:]} {p.stderr[-200:]}"}
    if p.returncode != 0 and "error" not in r:
        r["error"] = p.stderr[-300:]
    return r


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else None


def want(scenario):
    return not ONLY or scenario in ONLY


def time_left():
    return DEADLINE - time.monotonic()


def main():
    work = Path(tempfile.mkdtemp(prefix="mqttgate-bench-"))
    work.chmod(0o755)  # Mosquitto drops root privileges before reading its certificates
    s = Setups(work)
    results = {}  # (scenario, target) -> list of result dicts
    errors = []

    def record(scn, target, r):
        results.setdefault((scn, target), []).append(r)
        if "error" in r or r.get("errors") or r.get("publish_errors"):
            errors.append(f"{scn}/{target}: {r.get('error') or r.get('first_error')}")

    storm_targets = ["plain", "mqttgate", "mqttgate-thumbprint", "mosquitto-tls", "haproxy", "stunnel"] + PATH_TARGETS + STORM_ONLY + BASE_TARGETS
    try:
        s.start_all()
        # 1. connect storm
        for rnd in range(ROUNDS if want("storm") else 0):
            for t in storm_targets:
                base = "mqttgate" if t == "mqttgate-thumbprint" else t
                r = load(
                    s.client_args(base, thumbprint=t.endswith("thumbprint"))
                    + ["--duration", str(SECS), "--threads", "2", "storm", "--concurrency", "16"],
                    SECS + 30,
                )
                record("storm", t, r)
            print(f"storm round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)

        # 2. small-message relay: 64-byte QoS 0, many publishers to subscribers, unbounded
        for rnd in range(ROUNDS if want("relay") else 0):
            for t in TARGETS + [t for t in PATH_TARGETS if t == "mqttgate-proxy"] + BASE_TARGETS:
                r = load(
                    s.client_args(t)
                    + ["--duration", str(SECS), "--threads", "1", "pubsub", "--publishers", "16",
                       "--subscribers", "4", "--qos", "0", "--size", "64", "--batch", "16"],
                    SECS + 30,
                )
                record("relay", t, r)
            print(f"relay round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)

        # 3. added latency: QoS 1 at a fixed rate
        for rnd in range(ROUNDS if want("latency") else 0):
            for t in TARGETS:
                r = load(
                    s.client_args(t)
                    + ["--duration", str(SECS), "--threads", "1", "pubsub", "--publishers", "1",
                       "--subscribers", "1", "--qos", "1", "--size", "64", "--rate", "1000"],
                    SECS + 30,
                )
                record("latency", t, r)
            print(f"latency round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)

        # 4. bulk relay: 256 KiB payloads
        for rnd in range(ROUNDS if want("bulk") else 0):
            for t in TARGETS:
                r = load(
                    s.client_args(t)
                    + ["--duration", str(SECS), "--threads", "1", "pubsub", "--publishers", "1",
                       "--subscribers", "1", "--qos", "0", "--size", str(256 * 1024), "--batch", "4"],
                    SECS + 30,
                )
                record("bulk", t, r)
            print(f"bulk round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)

        # 5. idle memory: fresh processes per round, so freed memory of an earlier round
        # can't hide this round's growth.
        counts = IDLE_COUNTS
        for rnd in range(ROUNDS if want("idle") else 0):
            if time_left() < 60:
                errors.append(f"idle: stopped after {rnd} rounds to stay within the time limit")
                break
            for t in TARGETS + ["mqttgate-ws"] + (["mosquitto21-ws"] if MOSQUITTO_21 else []) + BASE_TARGETS:
                s.restart("mosquitto")
                if t not in ("plain", "mosquitto-tls"):
                    s.restart(s.terminator(t))
                r = load(
                    s.client_args(t)
                    + ["--threads", "2", "idle", "--counts", counts, "--concurrency", "64",
                       "--settle-ms", "500", "--stage-timeout", "40"],
                    120,
                )
                record("idle", t, r)
            print(f"idle round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)

        # 6. reconnect storm: the whole fleet at once, as after a restart; fresh processes
        # so every round starts from an empty accept queue and no sessions.
        for rnd in range(ROUNDS if want("reconnect") else 0):
            if time_left() < 60:
                errors.append(f"reconnect: stopped after {rnd} rounds to stay within the time limit")
                break
            for t in ["mqttgate", "mosquitto-tls"] + BASE_TARGETS:
                s.restart("mosquitto")
                if t.startswith("mqttgate"):
                    s.restart(t)
                r = load(
                    s.client_args(t)
                    + ["--threads", "2", "reconnect", "--clients", str(RECONNECT_CLIENTS), "--timeout", "60"],
                    90,
                )
                if "error" not in r and r.get("admitted") != r.get("clients"):
                    r["error"] = f"{r.get('admitted')} of {r.get('clients')} admitted: {r.get('first_error')}"
                record("reconnect", t, r)
            print(f"reconnect round {rnd + 1}/{ROUNDS} done ({time_left():.0f} s left)", flush=True)
    finally:
        s.stop_all()

    (work / "results.json").write_text(
        json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=1)
    )
    report(results, errors, work)
    shutil.rmtree(work / "pki", ignore_errors=True)  # keys never outlive the run


def summarize(results):
    g = {}

    def per(scn, t, f):
        return med([f(r) for r in results.get((scn, t), []) if "error" not in r])

    for t in ["plain", "mqttgate", "mqttgate-thumbprint", "mosquitto-tls", "haproxy", "stunnel", "mqttgate-ws", "mqttgate-proxy", "mqttgate-jwt", "mosquitto21-ws"] + BASE_TARGETS:
        g[("storm_rate", t)] = per("storm", t, lambda r: r["conn_per_s"])
        g[("storm_cpu_per_1k", t)] = per(
            "storm", t, lambda r: r["cpu_s"]["term"] / r["connections"] * 1000 if r["connections"] else None
        )
    for t in TARGETS + ["mqttgate-ws", "mqttgate-proxy", "mosquitto21-ws"] + BASE_TARGETS:
        g[("relay_rate", t)] = per("relay", t, lambda r: r["msgs_per_s"])
        g[("relay_loss", t)] = per("relay", t, lambda r: r["lost"] / r["sent"] if r["sent"] else None)
        g[("relay_term_us_per_msg", t)] = per(
            "relay", t, lambda r: r["cpu_s"]["term"] / r["received"] * 1e6 if r["received"] else None
        )
        g[("relay_broker_us_per_msg", t)] = per(
            "relay", t, lambda r: r["cpu_s"]["broker"] / r["received"] * 1e6 if r["received"] else None
        )
        g[("lat_p50", t)] = per("latency", t, lambda r: r["lat_us_p50"])
        g[("lat_p99", t)] = per("latency", t, lambda r: r["lat_us_p99"])
        g[("bulk_rate", t)] = per("bulk", t, lambda r: r["bytes_per_s"])
        # Bytes through the terminator: in from the publisher and out to the subscriber.
        g[("bulk_bytes_per_cpu_s", t)] = per(
            "bulk", t, lambda r: 2 * r["bytes_per_s"] * r["seconds"] / r["cpu_s"]["term"] if r["cpu_s"]["term"] else None
        )

        def idle_growth(r, key):
            a, b = r["stages"][1], r["stages"][-1]
            n = b["connections"] - a["connections"]
            if n <= 0:
                return None
            return (b["rss_kib"][key] - a["rss_kib"][key]) / n

        g[("idle_kib", t)] = per("idle", t, lambda r: idle_growth(r, "term"))
        g[("idle_broker_kib", t)] = per("idle", t, lambda r: idle_growth(r, "broker"))
        g[("idle_sock_kib", t)] = per(
            "idle",
            t,
            lambda r: (r["stages"][-1]["tcp_mem_pages"] - r["stages"][1]["tcp_mem_pages"])
            * 4
            / max(1, r["stages"][-1]["connections"] - r["stages"][1]["connections"]),
        )
        g[("idle_conns", t)] = per("idle", t, lambda r: r["stages"][-1]["connections"])
        g[("reconnect_s", t)] = per("reconnect", t, lambda r: r["all_admitted_s"])
        g[("reconnect_p50_ms", t)] = per("reconnect", t, lambda r: r["admitted_ms_p50"])
        g[("reconnect_retries", t)] = per("reconnect", t, lambda r: r["retries"])
        g[("reconnect_overflows", t)] = per("reconnect", t, lambda r: r["listen_overflows"])
    return g


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if abs(v) >= 1e9:
        return f"{v / 1e9:.2f} G"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f} k"
    return f"{v:.{digits}f}"


def targets_check(g):
    lat_add = lambda t, p: g[(p, t)] - g[(p, "plain")] if g[(p, t)] is not None and g[(p, "plain")] is not None else None  # noqa: E731
    rows = []

    def check(name, value, limit, op, how):
        ok = value is not None and (value <= limit if op == "<=" else value >= limit)
        rows.append((name, value, f"{op} {limit:g}", "met" if ok else "MISSED", how))

    c = g[("storm_cpu_per_1k", "mqttgate")]
    check("connect storm: CPU/conn vs Mosquitto native TLS", ratio(c, g[("storm_cpu_per_1k", "mosquitto-tls")]), 0.5, "<=", "ratio")
    check("connect storm: CPU/conn vs HAProxy", ratio(c, g[("storm_cpu_per_1k", "haproxy")]), 0.7, "<=", "ratio")
    check("connect storm: thumbprint vs chain CPU/conn", ratio(g[("storm_cpu_per_1k", "mqttgate-thumbprint")], c), 0.7, "<=", "ratio")
    check("small messages: throughput vs Mosquitto native TLS", ratio(g[("relay_rate", "mqttgate")], g[("relay_rate", "mosquitto-tls")]), 1.0, ">=", "ratio")
    check("small messages: mqttgate CPU/msg vs the broker's own", ratio(g[("relay_term_us_per_msg", "mqttgate")], g[("relay_broker_us_per_msg", "mqttgate")]), 0.5, "<=", "ratio")
    check("latency: p50 added over plain (µs)", lat_add("mqttgate", "lat_p50"), 100, "<=", "µs")
    hp = lat_add("haproxy", "lat_p99")
    check("latency: p99 added, minus HAProxy's (µs)", None if hp is None or lat_add("mqttgate", "lat_p99") is None else lat_add("mqttgate", "lat_p99") - hp, 0, "<=", "µs")
    check("idle: user-space KiB per proxied connection", g[("idle_kib", "mqttgate")], 8, "<=", "KiB")
    check("idle: per connection vs Mosquitto native TLS", ratio(g[("idle_kib", "mqttgate")], g[("idle_kib", "mosquitto-tls")]), 0.25, "<=", "ratio")
    check("WebSocket listener: idle KiB per session vs the TLS listener", ratio(g[("idle_kib", "mqttgate-ws")], g[("idle_kib", "mqttgate")]), 1.5, "<=", "ratio")
    check("bulk: bytes per CPU-second vs HAProxy", ratio(g[("bulk_bytes_per_cpu_s", "mqttgate")], g[("bulk_bytes_per_cpu_s", "haproxy")]), 1.2, ">=", "ratio")
    return rows


def stunnel_version():
    try:
        p = subprocess.run(["stunnel", "-version"], capture_output=True, text=True, timeout=5)
    except Exception as e:  # noqa: BLE001 - informational only
        return f"unknown ({e})"
    lines = (p.stdout + p.stderr).splitlines()
    return next((l.strip() for l in lines if l.strip().startswith("stunnel ")), "unknown")


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("kernel", os.uname().release),
        ("load average (1 min) at start / end", f"{LOAD_START:.2f} / {os.getloadavg()[0]:.2f}"
         + (" (other work was running: compare ratios, not absolute numbers)" if LOAD_START > 0.5 else "")),
        ("run time", f"{time.monotonic() - STARTED:.0f} s"),
        ("mqttgate", tool_version([str(BIN / "mqttgate"), "--version"])),
        ("Mosquitto", tool_version(["mosquitto", "-h"])),
        ("HAProxy", tool_version(["haproxy", "-v"])),
        ("stunnel", stunnel_version()),
        ("OpenSSL", tool_version(["openssl", "version"])),
        ("rustc", tool_version(["rustc", "--version"])),
    ]


def reconnect_report(g):
    """The reconnect storm side by side, for a run of that scenario alone."""
    rows = [
        ("seconds until all admitted", "reconnect_s", 2),
        ("median client's wait (ms)", "reconnect_p50_ms", 0),
        ("client retries", "reconnect_retries", 0),
        ("accept-queue overflows (system-wide)", "reconnect_overflows", 0),
    ]
    out = [f"reconnect storm: {RECONNECT_CLIENTS} clients at once, medians of {ROUNDS} rounds",
           f"{'':40} {'mqttgate':>10} {'mosquitto-tls':>14} {'ratio':>7}"]
    for label, key, d in rows:
        a, b = g.get((key, "mqttgate")), g.get((key, "mosquitto-tls"))
        out.append(f"{label:40} {fmt(a, d):>10} {fmt(b, d):>14} {fmt(ratio(a, b), 2):>7}")
    return "\n".join(out)


def report(results, errors, work):
    g = summarize(results)
    if ONLY == {"reconnect"}:
        # A partial run: printed, and docs/benchmarks.md keeps the last full run.
        print(reconnect_report(g))
        if errors:
            print("\nproblems:\n" + "\n".join(sorted(set(errors))[:20]))
        print(f"raw results in {work}/results.json")
        return
    print(reconnect_report(g))
    checks = targets_check(g)
    cols = ["plain", "mqttgate", "mosquitto-tls", "haproxy", "stunnel"]
    rows = [
        ("connect storm: connections/s", "storm_rate", 0),
        ("connect storm: terminator CPU-s per 1,000 connections", "storm_cpu_per_1k", 3),
        ("small messages (64 B QoS 0): messages/s delivered", "relay_rate", 0),
        ("small messages: loss (sent but not delivered in the window)", "relay_loss", 3),
        ("small messages: terminator CPU µs per message", "relay_term_us_per_msg", 2),
        ("small messages: broker CPU µs per message", "relay_broker_us_per_msg", 2),
        ("QoS 1 at 1,000 msg/s: latency p50 (µs)", "lat_p50", 0),
        ("QoS 1 at 1,000 msg/s: latency p99 (µs)", "lat_p99", 0),
        ("idle: terminator RSS KiB per connection", "idle_kib", 1),
        ("idle: broker RSS KiB per connection", "idle_broker_kib", 1),
        ("idle: kernel TCP memory KiB per connection (system-wide)", "idle_sock_kib", 2),
        ("idle: connections held", "idle_conns", 0),
        ("bulk (256 KiB): delivered bytes/s", "bulk_rate", 0),
        ("bulk: terminator bytes relayed per CPU-second", "bulk_bytes_per_cpu_s", 0),
        (f"reconnect storm ({RECONNECT_CLIENTS:,} at once): seconds until all admitted", "reconnect_s", 2),
        ("reconnect storm: median client's wait (ms)", "reconnect_p50_ms", 0),
        ("reconnect storm: client retries", "reconnect_retries", 0),
        ("reconnect storm: accept-queue overflows (system-wide)", "reconnect_overflows", 0),
    ]
    lines = []
    lines.append("| | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for label, key, d in rows:
        cells = []
        for c in cols:
            v = g.get((key, c))
            cells.append(fmt(v, d))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        f"| connect storm, thumbprint mode (mqttgate): connections/s, CPU-s per 1,000 | | "
        f"{fmt(g[('storm_rate', 'mqttgate-thumbprint')], 0)}, {fmt(g[('storm_cpu_per_1k', 'mqttgate-thumbprint')], 3)} | | | |"
    )
    suites = []
    for t in ["mqttgate", "mosquitto-tls", "haproxy", "stunnel"]:
        got = {r.get("negotiated") for r in results.get(("storm", t), []) if r.get("negotiated")}
        suites.append(", ".join(sorted(got)) or "n/a")
    lines.append("| negotiated with the rustls client | | " + " | ".join(suites) + " |")
    table = "\n".join(lines) + "\n\n" + paths_table(g) + base_table(g)
    tlines = ["| target | measured | wanted | result |", "|---|---|---|---|"]
    for name, value, want, res, unit in checks:
        tlines.append(f"| {name} | {fmt(value, 2)} | {want} | {res} |")
    tt = "\n".join(tlines)
    mach = "\n".join(f"- {k}: {v}" for k, v in machine())
    ran = sum(len(v) for v in results.values())
    body = f"""<!-- generated by scripts/bench.sh: everything between these markers is rewritten -->
Run: {time.strftime('%Y-%m-%d %H:%M %Z')}, {ROUNDS} rounds, {SECS:g} s per measurement, {ran} measurements; medians.

{mach}

{table}

"plain" is Mosquitto without TLS (the baseline); in that column "terminator" means
Mosquitto itself. For mosquitto-tls the terminator is the broker, so its CPU includes MQTT
work; for mqttgate, HAProxy and stunnel it is the proxy process alone.

### Targets

{tt}

![chart](benchmarks.png)
"""
    if errors:
        body += "\nProblems during the run:\n\n" + "\n".join(f"- {e}" for e in sorted(set(errors))[:20]) + "\n"
    body += "<!-- end of generated section -->\n"
    write_md(body)
    chart(g, work)
    print(table)
    print()
    for name, value, want, res, unit in checks:
        print(f"{res:7} {name}: {fmt(value, 2)} (wanted {want})")
    if errors:
        print("\nproblems:\n" + "\n".join(sorted(set(errors))[:20]))
    print(f"\nwrote {OUT_MD} and {OUT_PNG}; raw results in {work}/results.json")


def paths_table(g):
    """mqttgate's transports side by side: its TLS listener, its WebSocket listener (same
    process), and PROXY v2 towards Mosquitto 2.1 (when measured)."""
    cols = ["mqttgate", "mqttgate-ws", "mqttgate-proxy", "mosquitto21-ws"]
    rows = [
        ("connect storm: connections/s", "storm_rate", 0),
        ("connect storm: mqttgate CPU-s per 1,000 connections", "storm_cpu_per_1k", 3),
        ("small messages: mqttgate CPU µs per message", "relay_term_us_per_msg", 2),
        ("idle: mqttgate RSS KiB per connection", "idle_kib", 1),
    ]
    out = ["| mqttgate's paths | TLS listener | WebSocket listener | PROXY v2 to Mosquitto 2.1 | Mosquitto 2.1's own WebSocket+TLS listener |", "|---|---|---|---|---|"]
    for label, key, d in rows:
        out.append(f"| {label} | " + " | ".join(fmt(g.get((key, c)), d) for c in cols) + " |")
    ws, tls = g.get(("storm_cpu_per_1k", "mqttgate-ws")), g.get(("storm_cpu_per_1k", "mqttgate"))
    out.append(
        f"| ratios to the TLS listener (storm CPU, idle KiB) | 1 | {fmt(ratio(ws, tls), 2)}, "
        f"{fmt(ratio(g.get(('idle_kib', 'mqttgate-ws')), g.get(('idle_kib', 'mqttgate'))), 2)} | "
        f"{fmt(ratio(g.get(('storm_cpu_per_1k', 'mqttgate-proxy')), tls), 2)}, n/a | "
        f"{fmt(ratio(g.get(('storm_cpu_per_1k', 'mosquitto21-ws')), tls), 2)}, "
        f"{fmt(ratio(g.get(('idle_kib', 'mosquitto21-ws')), g.get(('idle_kib', 'mqttgate'))), 2)} |"
    )
    out.append(
        f"\nmqttgate's WebSocket listener vs Mosquitto 2.1's own (WebSocket + TLS, the broker doing "
        f"both): storm CPU {fmt(ratio(ws, g.get(('storm_cpu_per_1k', 'mosquitto21-ws'))), 2)}x, "
        f"idle KiB {fmt(ratio(g.get(('idle_kib', 'mqttgate-ws')), g.get(('idle_kib', 'mosquitto21-ws'))), 2)}x."
    )
    jwt = g.get(("storm_cpu_per_1k", "mqttgate-jwt"))
    out.append(
        f"\nJWT clients (CUSTOM-JWT, RS256, no client certificate) on the TLS listener: "
        f"{fmt(g.get(('storm_rate', 'mqttgate-jwt')), 0)} connections/s, {fmt(jwt, 3)} CPU-s per 1,000 "
        f"({fmt(ratio(jwt, tls), 2)}x the certificate clients')."
    )
    if not MOSQUITTO_21:
        out.append("\nPROXY v2 not measured: no Mosquitto 2.1 (run scripts/interop.sh ../shared/vendor first, or set BENCH_MOSQUITTO_21).")
    return "\n".join(out)


def base_table(g):
    """This build beside MQTTGATE_BASE, when given: the figures a change to the connection
    path must not regress, and the ratios this / base (lower is better for all three)."""
    if not BASE:
        return ""
    rows = [
        ("connect storm: CPU-s per 1,000 connections", "storm_cpu_per_1k", 3),
        ("small messages: mqttgate CPU µs per message", "relay_term_us_per_msg", 2),
        ("idle: RSS KiB per connection", "idle_kib", 1),
        (f"reconnect storm ({RECONNECT_CLIENTS:,} at once): seconds until all admitted", "reconnect_s", 2),
        ("reconnect storm: median client's wait (ms)", "reconnect_p50_ms", 0),
    ]
    out = [f"\n\n| this build vs MQTTGATE_BASE ({Path(BASE).name}) | this build | base | this / base |", "|---|---|---|---|"]
    for label, key, d in rows:
        now, base = g.get((key, "mqttgate")), g.get((key, "mqttgate-base"))
        out.append(f"| {label} | {fmt(now, d)} | {fmt(base, d)} | {fmt(ratio(now, base), 2)} |")
    return "\n".join(out)


def write_md(body):
    start, end = "<!-- generated by scripts/bench.sh", "<!-- end of generated section -->\n"
    text = OUT_MD.read_text() if OUT_MD.exists() else "# Benchmarks\n\n## Latest results\n\n"
    if start in text and end in text:
        a = text.index(start)
        b = text.index(end) + len(end)
        text = text[:a] + body + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + body
    OUT_MD.parent.mkdir(parents=True, exist_ok=True)
    OUT_MD.write_text(text)


def chart(g, work):
    """Four panels, each normalised to mqttgate = 1 where it makes sense."""
    if not shutil.which("gnuplot"):
        print("gnuplot not found: no chart")
        return
    cols = ["mqttgate", "mosquitto-tls", "haproxy", "stunnel"]
    panels = [
        ("Connect storm: CPU-s per 1,000 connections (lower is better)", "storm_cpu_per_1k"),
        ("64 B messages: messages/s (higher is better)", "relay_rate"),
        ("Idle: KiB per connection (lower is better)", "idle_kib"),
        ("Bulk: MB relayed per CPU-second (higher is better)", "bulk_bytes_per_cpu_s"),
    ]
    script = [
        f"set terminal pngcairo size 1200,800 font ',10'" if has_cairo() else "set terminal png size 1200,800",
        f"set output '{OUT_PNG}'",
        "set multiplot layout 2,2",
        "set style data histograms",
        "set style fill solid 0.8 border -1",
        "set boxwidth 0.7",
        "set yrange [0:*]",
        "unset key",
        "set grid ytics",
    ]
    for i, (title, key) in enumerate(panels):
        dat = work / f"chart{i}.dat"
        with open(dat, "w") as f:
            for c in cols:
                v = g.get((key, c)) or 0
                if key == "bulk_bytes_per_cpu_s":
                    v /= 1e6
                f.write(f'"{c}" {v}\n')
        script += [f"set title '{title}'", f"plot '{dat}' using 2:xtic(1) linecolor rgb '#3b6ea5'"]
    script.append("unset multiplot")
    (work / "chart.gp").write_text("\n".join(script) + "\n")
    subprocess.run(["gnuplot", str(work / "chart.gp")], check=False, timeout=30)


def has_cairo():
    p = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True, timeout=10)
    return "pngcairo" in (p.stdout + p.stderr)


if __name__ == "__main__":
    main()
