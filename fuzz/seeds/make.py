#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (fuzz/seeds/<target>/), from the inputs the
tests use: PROXY v2 headers as HAProxy sends them, the upgrade requests of
tests/websocket.rs, masked client frames, the packets of tests/common/wire.rs, the JWTs of
tests/jwt.rs, the webhook answers of src/auth/webhook/tests.rs, the registry of the README
and the authorization files of tests/authorization.rs. Run it after changing a seed;
scripts/fuzz.sh copies the seeds into fuzz/corpus (git-ignored) before each run."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- proxy_header: the v2 header (src/transport/proxy.rs), TCP4, TCP6, LOCAL, TLVs.
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy(cmd, fam, body):
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


tcp4 = bytes([192, 0, 2, 1, 10, 0, 0, 5]) + struct.pack(">HH", 51234, 8883)
tcp6 = bytes(range(16)) + bytes(15) + b"\x01" + struct.pack(">HH", 40000, 443)
ssl_tlv = b"\x20" + struct.pack(">H", 14) + b"\x01" + b"\x00\x00\x00\x00" + b"\x22" + struct.pack(">H", 6) + b"sensor"
write("proxy_header", "tcp4", proxy(1, 0x11, tcp4))
write("proxy_header", "tcp4_tlv", proxy(1, 0x11, tcp4 + ssl_tlv) + b"\x16\x03\x01")
write("proxy_header", "tcp6", proxy(1, 0x21, tcp6))
write("proxy_header", "local", proxy(0, 0x00, b""))
write("proxy_header", "unspec", proxy(1, 0x00, b"\x00" * 4))
write("proxy_header", "short", proxy(1, 0x11, tcp4[:6]))

# --- ws_upgrade: the requests of tests/websocket.rs and src/transport/ws/upgrade.rs.
GOOD = [
    "GET /mqtt HTTP/1.1",
    "Host: gate",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Protocol: mqttv3.1, mqtt",
]


def req(lines):
    return "\r\n".join(lines) + "\r\n\r\n"


write("ws_upgrade", "good", req(GOOD))
write("ws_upgrade", "origin_allowed", req(GOOD + ["Origin: https://app.example.com"]))
write("ws_upgrade", "origin_refused", req(GOOD + ["Origin: https://evil.example"]))
write("ws_upgrade", "query_mqttv31", req(["GET /mqtt?x=1 HTTP/1.1"] + GOOD[1:6] + ["sec-websocket-protocol: mqttv3.1"]))
write("ws_upgrade", "plain_http", req(["GET /mqtt HTTP/1.1", "Host: gate"]))
write("ws_upgrade", "frames_early", req(GOOD) + "\x82\x80")

# --- ws_frame: first byte = read size, then masked client frames (RFC 6455 §5.3).
MASK = bytes([1, 2, 3, 4])


def frame(opcode, payload, fin=True):
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


connect = bytes.fromhex("101200044d5154540402003c0006636c69333131")
write("ws_frame", "one_connect", b"\x07" + frame(2, connect))
write("ws_frame", "fragmented", b"\x03" + frame(2, connect[:5], fin=False) + frame(0, connect[5:]))
write("ws_frame", "ping_then_data", b"\x01" + frame(9, b"hi") + frame(2, connect))
write("ws_frame", "close", b"\x10" + frame(8, struct.pack(">H", 1000)) + frame(2, b"ignored"))
write("ws_frame", "long", b"\xff" + frame(2, bytes(300)))

# --- client_packets: first byte = version (even 3.1.1, odd 5) and piece size, then packets.


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def mstr(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(s)) + s


pub311 = packet(0x32, mstr("devices/sensor-1/telemetry") + struct.pack(">H", 7) + b"payload")
sub311 = packet(0x82, struct.pack(">H", 1) + mstr("devices/sensor-1/cmd/#") + b"\x01")
unsub311 = packet(0xA2, struct.pack(">H", 2) + mstr("devices/#"))
write("client_packets", "v311_stream", b"\x08" + pub311 + sub311 + unsub311 + b"\xc0\x00" + b"\xe0\x00")
pub5 = packet(0x32, mstr("t") + struct.pack(">H", 3) + b"\x03\x23\x00\x05" + b"x")
pub5_alias = packet(0x30, mstr("") + b"\x03\x23\x00\x05" + b"y")
sub5 = packet(0x82, struct.pack(">H", 4) + b"\x02\x0b\x07" + mstr("a/+") + b"\x02" + mstr("b/#") + b"\x00")
auth_props = b"\x15" + mstr("CUSTOM-JWT") + b"\x16" + mstr(b"tok")
auth5 = packet(0xF0, b"\x19" + varint(len(auth_props)) + auth_props)
disc5 = packet(0xE0, b"\x00\x00")
write("client_packets", "v5_stream", b"\x05" + pub5 + pub5_alias + sub5 + auth5 + disc5)
connack5 = packet(0x20, b"\x00\x00\x03\x22\x00\x0a")
suback = packet(0x90, struct.pack(">H", 4) + b"\x00\x01\x80")
write("client_packets", "broker_side", b"\x03" + connack5 + suback)

# --- properties: first byte = the id looked for, then a property list.
props = (
    b"\x11\x00\x00\x0e\x10"  # session expiry
    + b"\x21\x00\x14"  # receive maximum
    + b"\x15" + mstr("CUSTOM-JWT")
    + b"\x16" + mstr(b"\x00\x01")
    + b"\x26" + mstr("k") + mstr("v")  # user property
    + b"\x0b" + varint(300)  # subscription identifier
)
write("properties", "connect_props", b"\x15" + props)
write("properties", "user_props", b"\x26" + b"\x26" + mstr("a") + mstr("b") + b"\x26" + mstr("c") + mstr("d"))
write("properties", "topic_alias", b"\x23" + b"\x23\x00\x05")

# --- jwt: header 0xff claims (signed by the target), or a raw token.
NOW = 1_800_000_000
claims = {"sub": "sensor-1", "exp": NOW + 3600, "nbf": NOW - 10, "iss": "https://issuer.example",
          "aud": ["mqttgate", "other"], "jti": "t-1", "room": "345", "floor": 12, "types": ["Fan", "Light"]}
write("jwt", "valid", json.dumps({"alg": "HS256", "kid": "fuzz", "typ": "JWT"}).encode() + b"\xff" + json.dumps(claims).encode())
write("jwt", "expired", b'{"alg":"HS256"}\xff' + json.dumps(dict(claims, exp=NOW - 100)).encode())
write("jwt", "alg_none", b'{"alg":"none"}\xff' + json.dumps(claims).encode())
write("jwt", "crit", b'{"alg":"HS256","crit":["x"]}\xff{}')
write("jwt", "raw", b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzIn0.c2ln")

# --- webhook_answer: Azure's answer shapes (src/auth/webhook/tests.rs).
write("webhook_answer", "allow", json.dumps({"decision": "allow", "clientAuthenticationName": "dev-1", "expiration": NOW + 60,
                                             "attributes": {"room": 345, "kind": "sensor", "tags": ["a", "b"]}}))
write("webhook_answer", "allow_case", b'{"decision":"Allow","clientAuthenticationName":"dev-1"}')
write("webhook_answer", "deny", b'{"decision":"deny","errorReason":"not today"}')
write("webhook_answer", "maybe", b'{"decision":"maybe"}')
write("webhook_answer", "unknown_field", b'{"decision":"allow","clientAuthenticationName":"d","x":1}')

# --- registry: the README's example, the flattened CLI shape, ARM's shape.
registry = [
    {"name": "sensor-17", "properties": {"authenticationName": "sensor-17.plant.example.com",
                                         "clientCertificateAuthentication": {"validationScheme": "DnsMatchesAuthenticationName"},
                                         "state": "Enabled", "attributes": {"room": "345", "floor": 12, "types": ["Fan", "Light"]}}},
    {"name": "legacy-gw", "properties": {"clientCertificateAuthentication": {
        "validationScheme": "ThumbprintMatch",
        "allowedThumbprints": ["9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"]}}},
    {"name": "ip-dev", "properties": {"authenticationName": "192.0.2.7",
                                      "clientCertificateAuthentication": {"validationScheme": "IpMatchesAuthenticationName"}, "state": "Disabled"}},
]
write("registry", "array", json.dumps(registry, indent=1))
write("registry", "arm", json.dumps({"value": registry}))
flat = [{"name": "flat-1", "authenticationName": "flat-1", "clientCertificateAuthentication": {"validationScheme": "SubjectMatchesAuthenticationName"}, "state": "Enabled"}]
write("registry", "flat", json.dumps(flat))
write("registry", "duplicate", json.dumps(registry + registry[:1]))

# --- authz_files: client groups 0xff topic spaces 0xff bindings 0xff a topic
# (tests/authorization.rs).
GROUPS = """[
  {"name": "$all", "description": "Built in"},
  {"name": "new-sensors", "query": "attributes.type = 'sensor' and attributes.year >= 2020 or authenticationName IN ['sensor-9']"},
  {"name": "viewers", "properties": {"query": "attributes.type <> 'sensor' and (attributes.year < 2000 or attributes.type = 'viewer')"}},
  {"name": "floors", "query": "attributes.floor >= 10 and attributes.room = '345'"}
]"""
SPACES = """{"value": [
  {"name": "own-telemetry", "properties": {"topicTemplates": ["devices/${client.authenticationName}/telemetry/#"]}},
  {"name": "fleet-status", "properties": {"topicTemplates": ["devices/${client.authenticationName}/fleet-${client.attributes.fleet}/status"]}},
  {"name": "rooms", "properties": {"topicTemplates": ["rooms/${client.attributes.room}/+"]}}
]}"""
BINDINGS = """[
  {"name": "sensors-publish-telemetry", "clientGroupName": "new-sensors", "topicSpaceName": "own-telemetry", "permission": "Publisher"},
  {"name": "floors-rooms", "clientGroupName": "floors", "topicSpaceName": "rooms", "permission": "Subscriber"},
  {"name": "everyone-reads-rooms", "clientGroupName": "$all", "topicSpaceName": "rooms", "permission": "Publisher"}
]"""
write("authz_files", "model", GROUPS.encode() + b"\xff" + SPACES.encode() + b"\xff" + BINDINGS.encode() + b"\xffrooms/345/light")
write("authz_files", "telemetry", GROUPS.encode() + b"\xff" + SPACES.encode() + b"\xff" + BINDINGS.encode() + b"\xffdevices/sensor-1/telemetry/a")

# --- parse_connect: the CONNECTs captured from mosquitto_pub (fuzz/README.md).
for i, v in enumerate([
    "101300064d51497364700302003c0005636c693331",
    "101200044d5154540402003c0006636c69333131",
    "103200044d51545404ee003c0007636c6933313177000677696c6c2f740003627965000475736572000a70c3a4737377c3b67264",
    "103a00044d51545405c2003c1d1100000e102600026b310002763121001427000186a022000a170119010004636c6935000575736572350003707735",
    "106700044d51545405d6003c08110000000a2100140005636c69357731180000001e0101020000003c03000a746578742f706c61696e080006726573702f74090003616263260002776b00027776000777696c6c2f7435000462796535000575736572350003707735",
], start=1):
    write("parse_connect", f"vector{i}", bytes.fromhex(v))
