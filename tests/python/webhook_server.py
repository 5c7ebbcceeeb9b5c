#!/usr/bin/env python3
"""An authentication webhook for tests/webhook.rs: Python's http.server over ssl.

Answers each POST by the request's userName (or clientId when it has none), by prefix:

  allow...     {"decision":"allow","clientAuthenticationName":"hook-<key>", attributes,
                "expiration": now + 3600}
  short...     the same with "expiration": now + SHORT_S (the session must end then)
  noexp...     an allow without expiration
  deny...      {"decision":"deny","errorReason":"..."}
  malformed... a truncated JSON object
  slow...      waits SLOW_S seconds, then allows
  error500...  HTTP 500
  anything else: deny

Every request is appended to RECORD (one JSON object a line: path, the Authorization
header, the TLS client certificate's subject when one was presented, and the body as
parsed) before it is answered, so the test counts and inspects what mqttgate sent.

usage: webhook_server.py CERT KEY RECORD [CLIENT_CA]
With CLIENT_CA the server requires a TLS client certificate issued by it.
Prints "PORT <n>" on stdout once listening.
"""

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHORT_S = 2
SLOW_S = 3

record_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, so mqttgate can reuse its connection.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparsed": raw.decode("latin-1")}
        peer = self.connection.getpeercert()
        subject = None
        if peer:
            subject = dict(x[0] for x in peer.get("subject", ()))
        with record_lock:
            with open(self.server.record, "a") as f:
                f.write(json.dumps({
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "client_subject": subject,
                    "body": body,
                }) + "\n")
        key = body.get("userName") or body.get("clientId") or ""
        now = int(time.time())
        allow = {
            "decision": "allow",
            "clientAuthenticationName": "hook-" + key,
            "attributes": {"floor": 3, "zone": "a", "groups": ["x", "y"]},
            "expiration": now + 3600,
        }
        status, answer = 200, None
        if key.startswith("allow"):
            answer = allow
        elif key.startswith("short"):
            answer = dict(allow, expiration=now + SHORT_S)
        elif key.startswith("noexp"):
            answer = {k: v for k, v in allow.items() if k != "expiration"}
        elif key.startswith("malformed"):
            answer = '{"decision": "allow", "clientAuthenticationName": '
        elif key.startswith("slow"):
            time.sleep(SLOW_S)
            answer = allow
        elif key.startswith("error500"):
            status, answer = 500, {"error": "boom"}
        else:
            answer = {"decision": "deny", "errorReason": "not on the list: " + key}
        data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # mqttgate gave up (its timeout); nothing to answer


def main() -> int:
    cert, key, record = sys.argv[1:4]
    client_ca = sys.argv[4] if len(sys.argv) > 4 else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.record = record
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
