#!/usr/bin/python3
"""An HTTPS server playing the agency's whitelist server, badly on request.

    list_server.py --port P --dir D --cert C --key K [--other-cert C2 --other-key K2]

At each connection it reads D/mode (one line) and behaves accordingly:

    file NAME    200 with the bytes of D/NAME (application/xml)
    status N     HTTP N with a short body
    hang         completes TLS, reads the request, never answers (until the client gives up)
    huge MB      200 announcing MB MiB and streaming them (until the client stops reading)
    untrusted    TLS with the other certificate (a CA the box does not trust)

Every request is appended to D/requests.log ("<mode> <request line>"), so a test can tell
that an attempt reached the server. Runs until killed.
"""
import argparse
import os
import socket
import ssl
import threading
import time


def context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def serve(raw, args, good, other):
    try:
        mode = open(os.path.join(args.dir, "mode")).read().strip()
    except OSError:
        mode = "status 503"
    ctx = other if mode == "untrusted" else good
    try:
        raw.settimeout(120)
        conn = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    try:
        line = read_request(conn)
        with open(os.path.join(args.dir, "requests.log"), "a") as log:
            log.write("%s %s\n" % (mode, line))
        word, _, arg = mode.partition(" ")
        if word == "file":
            body = open(os.path.join(args.dir, arg), "rb").read()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body) + body)
        elif word == "status":
            body = b"not here\n"
            conn.sendall(b"HTTP/1.1 %s Not Found\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (arg.encode(), len(body)) + body)
        elif word == "hang":
            time.sleep(60)
        elif word == "huge":
            size = int(arg) * 1024 * 1024
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n<ListeBlanche>" % size)
            block = b"<x/>" * 16384
            sent = 14
            while sent < size:
                conn.sendall(block)
                sent += len(block)
        else:
            conn.sendall(b"HTTP/1.1 500 Bad Mode\r\nContent-Length: 0\r\n\r\n")
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--other-cert")
    p.add_argument("--other-key")
    args = p.parse_args()
    good = context(args.cert, args.key)
    other = context(args.other_cert, args.other_key) if args.other_cert else good
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", args.port))
    s.listen(16)
    while True:
        raw, _ = s.accept()
        threading.Thread(target=serve, args=(raw, args, good, other), daemon=True).start()


if __name__ == "__main__":
    main()
