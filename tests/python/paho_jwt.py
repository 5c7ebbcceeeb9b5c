#!/usr/bin/env python3
"""A paho-mqtt 2.x MQTT 5 client for tests/jwt.rs: authenticates with a JWT.

Connects through mqttgate over TLS without a client certificate, sending the token as the
CONNECT's Authentication Data under Authentication Method METHOD. When accepted,
subscribes to devices/<SUB>/paho at QoS 1, publishes one QoS 1 message there and waits
for it to come back through the broker. Prints one JSON object on stdout:

  connected      bool   CONNACK accepted
  reason_code    int    on_connect's reason code value
  reason_name    str    its name, e.g. "Not authorized"
  auth_method    str    the CONNACK's Authentication Method property, or null
  published      bool   the PUBACK arrived
  received       bool   the message came back
  error          str    what went wrong outside MQTT, or null

usage: paho_jwt.py HOST PORT CAFILE METHOD TOKEN_FILE SUB [TIMEOUT_S]
"""

import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    host, port, cafile, method, token_file, sub = sys.argv[1:7]
    wait = float(sys.argv[7]) if len(sys.argv) > 7 else 10.0
    with open(token_file, "rb") as f:
        token = f.read().strip()
    topic = f"devices/{sub}/paho"
    payload = b"hello from a jwt client"
    result = {
        "connected": False,
        "reason_code": None,
        "reason_name": None,
        "auth_method": None,
        "published": False,
        "received": False,
        "error": None,
    }
    done = False

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=cafile)

    def on_connect(c, _u, _flags, reason_code, props):
        nonlocal done
        result["reason_code"] = reason_code.value
        result["reason_name"] = reason_code.getName()
        result["auth_method"] = getattr(props, "AuthenticationMethod", None)
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

    def on_publish(_c, _u, _mid, _rc, _props):
        nonlocal done
        result["published"] = True
        done = result["received"]

    def on_message(_c, _u, msg):
        nonlocal done
        result["received"] = msg.payload == payload
        done = result["published"]

    def on_disconnect(_c, _u, _flags, reason_code, _props):
        nonlocal done
        if not done and result["error"] is None:
            result["error"] = f"disconnected: {reason_code}"
        done = True

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = method
    props.AuthenticationData = token
    try:
        client.connect(host, int(port), keepalive=30, properties=props)
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
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
