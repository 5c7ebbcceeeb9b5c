#!/usr/bin/env python3
"""A paho-mqtt 2.x client for tests/paho_clients.rs.

Connects through mqttgate with a client certificate; when accepted, subscribes to
devices/<username>/paho at QoS 1, publishes one QoS 1 message there and waits for it to
come back through the broker. Prints one JSON object on stdout:

  connected      bool   CONNACK accepted
  reason_code    int    on_connect's reason code value (paho maps v3 codes to v5 values)
  reason_name    str    its name, e.g. "Not authorized"
  connack_rc     int    the raw CONNACK return code paho logged (v3 only, else null)
  published      bool   the PUBACK arrived
  received       str    the payload that came back (hex), or null
  error          str    what went wrong outside MQTT, or null

usage: paho_client.py HOST PORT CAFILE CERT KEY USERNAME (v311|v5) [TIMEOUT_S] [WS_PATH]
With WS_PATH, paho connects with transport="websockets" on that path.
"""

import json
import re
import sys
import time

import paho.mqtt.client as mqtt


def main() -> int:
    host, port, cafile, cert, key, username, protocol = sys.argv[1:8]
    wait = float(sys.argv[8]) if len(sys.argv) > 8 else 10.0
    ws_path = sys.argv[9] if len(sys.argv) > 9 else None
    proto = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}[protocol]
    topic = f"devices/{username}/paho"
    payload = f"hello from paho {protocol}".encode()
    result = {
        "connected": False,
        "reason_code": None,
        "reason_name": None,
        "connack_rc": None,
        "published": False,
        "received": None,
        "error": None,
    }
    done = False

    transport = "websockets" if ws_path else "tcp"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, protocol=proto, transport=transport
    )
    if ws_path:
        client.ws_set_options(path=ws_path)
    client.tls_set(ca_certs=cafile, certfile=cert, keyfile=key)
    if username:
        client.username_pw_set(username)

    def on_log(_c, _u, _level, buf):
        m = re.match(r"Received CONNACK \((\d+), (\d+)\)", buf)
        if m:
            result["connack_rc"] = int(m.group(2))

    def on_connect(c, _u, _flags, reason_code, _props):
        nonlocal done
        result["reason_code"] = reason_code.value
        result["reason_name"] = reason_code.getName()
        if reason_code.is_failure:
            done = True
            return
        result["connected"] = True
        c.subscribe(topic, qos=1)

    def on_subscribe(c, _u, _mid, reason_codes, _props):
        nonlocal done
        if any(rc.is_failure for rc in reason_codes):
            result["error"] = f"subscribe refused: {[str(rc) for rc in reason_codes]}"
            done = True
            return
        c.publish(topic, payload, qos=1)

    # Mosquitto may deliver our own message before its PUBACK: wait for both.
    def on_publish(_c, _u, _mid, _rc, _props):
        nonlocal done
        result["published"] = True
        done = result["received"] is not None

    def on_message(_c, _u, msg):
        nonlocal done
        result["received"] = msg.payload.hex()
        done = result["published"]

    def on_disconnect(_c, _u, _flags, reason_code, _props):
        nonlocal done
        if not done and result["error"] is None:
            result["error"] = f"disconnected: {reason_code}"
        done = True

    client.on_log = on_log
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    try:
        client.connect(host, int(port), keepalive=30)
        deadline = time.monotonic() + wait
        while not done and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        if not done:
            result["error"] = "timed out"
        if result["connected"]:
            client.disconnect()
            client.loop(timeout=0.1)
    except Exception as e:  # report, don't crash: the Rust test prints the JSON
        result["error"] = f"{type(e).__name__}: {e}"
    result["expected"] = payload.hex()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
