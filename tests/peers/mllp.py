#!/usr/bin/env python3
"""MLLP sender for the durability test: sends COUNT copies of an HL7 file, the i-th with MSH-10
set to PREFIX<i>, one at a time, over MLLP, as a RIS does: on a connection error or an AE it
reconnects and sends the same message again; on AA it appends the control id to ACK_LOG and
fsyncs it before sending the next. Exits 0 once every message got AA (or 1 at the deadline).

    mllp.py PORT FILE COUNT PREFIX ACK_LOG [SECONDS]
"""
import os
import socket
import sys
import time

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


def with_control_id(msg, cid):
    first, rest = msg.split(b"\r", 1)
    fields = first.split(b"|")
    fields[9] = cid.encode()
    return b"|".join(fields) + b"\r" + rest


def exchange(sock, msg):
    sock.sendall(SB + msg + EB + CR)
    buf = b""
    while EB + CR not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the ACK")
        buf += chunk
    ack = buf[buf.index(SB) + 1: buf.index(EB)]
    msa = [s for s in ack.split(b"\r") if s.startswith(b"MSA|")][0].split(b"|")
    return msa[1].decode(), msa[2].decode()


def main():
    port, path, count, prefix, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    deadline = time.time() + (float(sys.argv[6]) if len(sys.argv) > 6 else 120)
    template = open(path, "rb").read()
    acked = open(log, "a")
    sock = None
    for i in range(count):
        cid = "%s%d" % (prefix, i)
        msg = with_control_id(template, cid)
        while True:
            if time.time() > deadline:
                print("deadline reached at %s" % cid, file=sys.stderr)
                return 1
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
                code, echoed = exchange(sock, msg)
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.05)
                continue
            if code == "AA" and echoed == cid:
                acked.write(cid + "\n")
                acked.flush()
                os.fsync(acked.fileno())
                break
            if code == "AR":
                print("%s refused: AR" % cid, file=sys.stderr)
                return 1
            time.sleep(0.05)  # AE: the box could not record it; send it again
    return 0


if __name__ == "__main__":
    sys.exit(main())
