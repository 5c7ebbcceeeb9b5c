#!/usr/bin/env python3
"""Idle cost of the trust-file watcher: mqttgate with a generated N-client registry and a
500 ms watch interval, no traffic; prints the CPU it used over a window, as a percentage of
one core. Used by `scripts/bench.sh watch`; give a second binary to compare (e.g. an older
build) as MQTTGATE_BASE=/path/to/mqttgate.

    scripts/watch-idle.py BINARY [CLIENTS] [SECONDS]
"""
import json, os, socket, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def registry(n):
    return json.dumps({"value": [{"name": f"device-{i:06d}", "properties": {
        "authenticationName": f"device-{i:06d}.fleet.example.com",
        "clientCertificateAuthentication": {"validationScheme": "DnsMatchesAuthenticationName"},
        "state": "Enabled", "attributes": {"floor": i % 40, "room": str(i % 997)},
        "description": "generated for the watcher benchmark"}} for i in range(n)]})

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def measure(binary, n, seconds):
    with tempfile.TemporaryDirectory() as d:
        listen = free_port()
        subprocess.run([binary, "certs", "demo", d, "--listen-port", str(listen),
                        "--admin-port", str(free_port())], check=True, capture_output=True)
        conf = os.path.join(d, "mqttgate.toml")
        text = open(conf).read()
        open(os.path.join(d, "clients.json"), "w").write(registry(n))
        text += "\n[reload]\nwatch_interval_ms = 500\n"
        open(conf, "w").write(text)
        p = subprocess.Popen([binary, "run", "--config", conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while time.time() < deadline:  # the port opens once the registry is loaded
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit("mqttgate did not start listening")
            time.sleep(2)  # let the first load's work settle before the window opens
            start = cpu_seconds(p.pid)
            time.sleep(seconds)
            used = cpu_seconds(p.pid) - start
        finally:
            p.terminate(); p.wait(10)
        return 100.0 * used / seconds

if __name__ == "__main__":
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    rows = [("mqttgate", binary)]
    if os.environ.get("MQTTGATE_BASE"):
        rows.append(("base", os.environ["MQTTGATE_BASE"]))
    for label, b in rows:
        print(f"watcher idle CPU, {n} clients, 500 ms interval, {label}: {measure(b, n, seconds):.2f}% of a core")
