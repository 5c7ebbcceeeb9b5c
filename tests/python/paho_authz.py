#!/usr/bin/env python3
"""A paho-mqtt 2.x client for tests/authorization.rs: what an ordinary MQTT library sees
under mqttgate's topic-space authorization.

Connects through mqttgate as NAME with a client certificate, subscribes at QoS 1 to
devices/NAME/telemetry/#, devices/other/telemetry/# and devices/NAME/cmd/#, publishes
"allowed" to devices/NAME/telemetry/t (QoS 1) and waits for it to come back, then
publishes "denied" to devices/NAME/secret (QoS 1). Prints one JSON object:

  suback                     [int]  the SUBACK's reason code values, in filter order
  received                   str    the payload that came back, or null
  denied_puback              int    v5: the reason code of the denied PUBLISH's PUBACK
  disconnected_after_denied  bool   the connection closed after the denied PUBLISH
  error                      str    what went wrong, or null

usage: paho_authz.py HOST PORT CAFILE CERT KEY NAME (v311|v5) [TIMEOUT_S]
"""

import json
import sys
import time

import paho.mqtt.client as mqtt


def main() -> int:
    host, port, cafile, cert, key, name, protocol = sys.argv[1:8]
    wait = float(sys.argv[8]) if len(sys.argv) > 8 else 10.0
    proto = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}[protocol]
    own = f"devices/{name}/telemetry/t"
    result = {
        "suback": None,
        "received": None,
        "denied_puback": None,
        "disconnected_after_denied": False,
        "error": None,
    }
    state = {"done": False, "denied_mid": None}

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=proto)
    client.tls_set(ca_certs=cafile, certfile=cert, keyfile=key)
    client.username_pw_set(name)

    def on_connect(c, _u, _flags, reason_code, _props):
        if reason_code.is_failure:
            result["error"] = f"connect refused: {reason_code}"
            state["done"] = True
            return
        c.subscribe(
            [
                (f"devices/{name}/telemetry/#", 1),
                ("devices/other/telemetry/#", 1),
                (f"devices/{name}/cmd/#", 1),
            ]
        )

    def on_subscribe(c, _u, _mid, reason_codes, _props):
        result["suback"] = [rc.value for rc in reason_codes]
        c.publish(own, b"allowed", qos=1)

    def on_message(c, _u, msg):
        result["received"] = msg.payload.decode()
        info = c.publish(f"devices/{name}/secret", b"denied", qos=1)
        state["denied_mid"] = info.mid

    def on_publish(_c, _u, mid, rc, _props):
        if mid == state["denied_mid"]:
            result["denied_puback"] = rc.value
            state["done"] = True

    def on_disconnect(_c, _u, _flags, reason_code, _props):
        if state["denied_mid"] is not None:
            result["disconnected_after_denied"] = True
        elif result["error"] is None:
            result["error"] = f"disconnected: {reason_code}"
        state["done"] = True

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect

    try:
        client.connect(host, int(port), keepalive=30)
        deadline = time.monotonic() + wait
        while not state["done"] and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        if not state["done"]:
            result["error"] = "timed out"
        client.disconnect()
        client.loop(timeout=0.1)
    except Exception as e:  # report, don't crash: the Rust test prints the JSON
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
