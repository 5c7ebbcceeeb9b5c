#!/usr/bin/env python3
"""Authorization's cost on the small-message relay (issue 13's budget: <= 1.15x mqttgate's
CPU per message with it off). Run through `scripts/bench.sh authz`.

Two mqttgate processes in front of one Mosquitto, identical but for an [authorization]
section (Azure-shaped lists whose grants the load tool's topics must go through: a few
templates that do not match, with client variables, before the one that does). The
64-byte QoS 0 pubsub scenario of bench.py runs against each, interleaved, BENCH_ROUNDS
times; prints the median mqttgate CPU µs per delivered message for both and the ratio.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECS = float(os.environ.get("BENCH_SECONDS", "2"))

GROUPS = """[{"name": "$all"},
 {"name": "sensors", "query": "authenticationName = 'sensor-subject' or attributes.type = 'sensor'"}]"""
SPACES = """[{"name": "own", "topicTemplates": ["devices/${client.authenticationName}/telemetry/#",
   "devices/${client.authenticationName}/status", "fleets/+/vehicles/${client.authenticationName}/#"]},
 {"name": "bench", "topicTemplates": ["bench/#"]}]"""
BINDINGS = """[{"name": "a-own", "clientGroupName": "sensors", "topicSpaceName": "own", "permission": "Publisher"},
 {"name": "b-bench-pub", "clientGroupName": "sensors", "topicSpaceName": "bench", "permission": "Publisher"},
 {"name": "c-bench-sub", "clientGroupName": "$all", "topicSpaceName": "bench", "permission": "Subscriber"}]"""


def start_authz(s: bench.Setups):
    work = s.work
    for name, text in [("client-groups.json", GROUPS), ("topic-spaces.json", SPACES),
                       ("permission-bindings.json", BINDINGS)]:
        (work / name).write_text(text)
    port = bench.free_port()
    s.port["mqttgate-authz"] = port
    conf = (work / "mqttgate.toml").read_text().replace(
        f"127.0.0.1:{s.port['mqttgate']}", f"127.0.0.1:{port}"
    )
    conf += f"""[authorization]
client_groups = "{work}/client-groups.json"
topic_spaces = "{work}/topic-spaces.json"
permission_bindings = "{work}/permission-bindings.json"
"""
    (work / "mqttgate-authz.toml").write_text(conf)
    env = dict(os.environ, RUST_LOG="warn")
    s._spawn("mqttgate-authz",
             [str(bench.BIN / "mqttgate"), "run", "--config", str(work / "mqttgate-authz.toml")],
             port, env=env)


def main():
    work = Path(tempfile.mkdtemp(prefix="mqttgate-bench-authz-"))
    work.chmod(0o755)
    s = bench.Setups(work)
    per_msg = {"mqttgate": [], "mqttgate-authz": []}
    rates = {"mqttgate": [], "mqttgate-authz": []}
    try:
        s.start_mosquitto()
        s.start_mqttgate()
        start_authz(s)
        for rnd in range(ROUNDS):
            # Alternating which runs first cancels a load that drifts during a round.
            order = ["mqttgate", "mqttgate-authz"] if rnd % 2 == 0 else ["mqttgate-authz", "mqttgate"]
            for t in order:
                r = bench.load(
                    s.client_args(t)
                    + ["--duration", str(SECS), "--threads", "1", "pubsub", "--publishers", "16",
                       "--subscribers", "4", "--qos", "0", "--size", "64", "--batch", "16"],
                    SECS + 30,
                )
                if "error" in r or not r.get("received"):
                    sys.exit(f"{t}: {json.dumps(r)[:400]}")
                per_msg[t].append(r["cpu_s"]["term"] / r["received"] * 1e6)
                rates[t].append(r["msgs_per_s"])
            print(f"round {rnd + 1}/{ROUNDS}: off {per_msg['mqttgate'][-1]:.2f} µs/msg, "
                  f"on {per_msg['mqttgate-authz'][-1]:.2f} µs/msg, "
                  f"ratio {per_msg['mqttgate-authz'][-1] / per_msg['mqttgate'][-1]:.3f}", flush=True)
    finally:
        s.stop_all()
    off, on = bench.med(per_msg["mqttgate"]), bench.med(per_msg["mqttgate-authz"])
    print(f"small messages (64 B QoS 0, 16 publishers -> 4 subscribers), medians of {ROUNDS} rounds:")
    print(f"  authorization off: {off:.2f} µs mqttgate CPU per message, {bench.med(rates['mqttgate']):.0f} msg/s")
    print(f"  authorization on:  {on:.2f} µs mqttgate CPU per message, {bench.med(rates['mqttgate-authz']):.0f} msg/s")
    paired = bench.med([b / a for a, b in zip(per_msg["mqttgate"], per_msg["mqttgate-authz"])])
    print(f"  ratio on/off: {on / off:.3f} of the medians, {paired:.3f} median of the rounds' ratios (budget 1.15)")
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
