#!/usr/bin/python3
"""An OAuth 2.0 token introspection endpoint (RFC 7662) standing in for Pro Santé Connect,
which no one can reach from here.

    introspect.py --port P --cert C --key K --client ID:SECRET --tokens FILE --log FILE

POST /introspect with HTTP Basic client credentials and a form `token=…`: answers
`{"active": …}` from FILE (JSON: token -> object, e.g. {"good": {"active": true, "exp": N}}),
`{"active": false}` for an unknown token, 401 for wrong client credentials. Every request's
token is appended to the log, so a test can count what reached the endpoint.
"""
import argparse
import base64
import json
import ssl
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    expected = "Basic " + base64.b64encode(a.client.encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(n).decode())
            token = form.get("token", [""])[0]
            with open(a.log, "a") as f:
                f.write(token + "\n")
            if self.path != "/introspect":
                return self.answer(404, {"error": "not found"})
            if self.headers.get("Authorization") != expected:
                return self.answer(401, {"error": "invalid_client"})
            tokens = json.load(open(a.tokens))
            self.answer(200, tokens.get(token, {"active": False}))

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
