#!/usr/bin/env python3
"""Replays a raw HTTP request (the agency validator's, shared/ref/wado-rs/) over TLS with a
client certificate, after substitutions, and reads the answer as the validator would.

    replay.py --port P --ca CA --cert C --key K --request FILE --out BODY [--sub OLD=NEW ...]

Substitutions apply in order to the request text; lines end with CRLF and the head with an
empty line. Prints one JSON object {"status": N, "headers": [[name, value], ...]} and writes the
de-chunked body to BODY.
"""
import argparse
import json
import socket
import ssl


def main():
    p = argparse.ArgumentParser()
    for a in ("--port", "--ca", "--cert", "--key", "--request", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--sub", action="append", default=[])
    a = p.parse_args()
    text = open(a.request).read()
    for s in a.sub:
        old, new = s.split("=", 1)
        if old not in text:
            raise SystemExit("replay.py: %r is not in %s" % (old, a.request))
        text = text.replace(old, new)
    lines = [l.rstrip("\r") for l in text.strip("\r\n").split("\n")]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", int(a.port)), timeout=60) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(request)
            f = s.makefile("rb")
            status = int(f.readline().split()[1])
            headers = []
            while True:
                line = f.readline().decode().rstrip("\r\n")
                if not line:
                    break
                k, v = line.split(":", 1)
                headers.append([k.strip(), v.strip()])
            h = {k.lower(): v for k, v in headers}
            body = b""
            if h.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int(f.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        f.readline()
                        break
                    body += f.read(size)
                    f.readline()
            else:
                body = f.read(int(h.get("content-length", "0")))
    open(a.out, "wb").write(body)
    print(json.dumps({"status": status, "headers": headers}))


if __name__ == "__main__":
    main()
