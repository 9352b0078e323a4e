#!/usr/bin/env python3
"""An HL7 v2 MLLP receiver for tests: the independent peer radserve's ORU^R01 goes to.

Usage:
    oru_receiver.py --port PORT --out FILE.jsonl [--reject-first N] [--host 127.0.0.1]

Binds (PORT 0: a free port), prints `listening <port>` on stdout, then answers every MLLP
frame (<VT> message <FS><CR>) on any number of connections with one ACK:
- the first N messages (--reject-first): AR, "receiver busy (test)" — the sender must retry;
- a message hl7apy cannot parse and validate strictly (VALIDATION_LEVEL.STRICT, its v2.5.1
  message structures and datatypes): AE with hl7apy's reason;
- otherwise AA.

The validation is hl7apy's (pip package `hl7apy`, an HL7 v2 implementation independent of
radserve); this script only frames, records and answers. Each message is appended to --out
as one JSON object: control_id, message_type, version, ack, errors, and the fields the tests
read (pid, orc, obr, obx[]), taken from the raw text so they are there even for a refused
message. scripts/install-test-deps.sh installs hl7apy.
"""

import argparse
import datetime
import itertools
import json
import signal
import socketserver
import sys
import threading

from hl7apy import parser
from hl7apy.consts import VALIDATION_LEVEL

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
MAX_FRAME = 16 << 20

_lock = threading.Lock()
_count = itertools.count(1)
_ack_ids = itertools.count(1)


def fields(segment):
    """HL7 field n at index n (MSH-1 is the field separator itself)."""
    parts = segment.split("|")
    if parts[0] == "MSH":
        return ["MSH", "|"] + parts[1:]
    return parts


def field(segment, n):
    f = fields(segment)
    return f[n] if n < len(f) else ""


def component(value, n, sub=None):
    first = value.split("~")[0]
    comps = first.split("^")
    c = comps[n - 1] if n - 1 < len(comps) else ""
    if sub is not None:
        subs = c.split("&")
        c = subs[sub - 1] if sub - 1 < len(subs) else ""
    return c


def summary(text):
    """The fields the tests read, from the raw message."""
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    by_id = {}
    for s in segments:
        by_id.setdefault(s[:3], []).append(s)
    msh = by_id.get("MSH", [""])[0]
    out = {
        "control_id": field(msh, 10),
        "message_type": field(msh, 9),
        "version": field(msh, 12),
    }
    if "PID" in by_id:
        pid = by_id["PID"][0]
        out["pid"] = {
            "patient_id": component(field(pid, 3), 1),
            "issuer": component(field(pid, 3), 4, 1),
            "name": field(pid, 5),
        }
    if "ORC" in by_id:
        orc = by_id["ORC"][0]
        out["orc"] = {
            "order_control": field(orc, 1),
            "placer": component(field(orc, 2), 1),
            "filler": component(field(orc, 3), 1),
        }
    if "OBR" in by_id:
        obr = by_id["OBR"][0]
        out["obr"] = {
            "placer": component(field(obr, 2), 1),
            "filler": component(field(obr, 3), 1),
            "service": field(obr, 4),
            "observation_datetime": field(obr, 7),
            "placer_field_1": field(obr, 18),
            "result_status": field(obr, 25),
        }
    out["obx"] = [
        {
            "set_id": field(o, 1),
            "value_type": field(o, 2),
            "identifier": field(o, 3),
            "sub_id": field(o, 4),
            "value": field(o, 5),
            "units": field(o, 6),
            "abnormal_flags": field(o, 8),
            "status": field(o, 11),
        }
        for o in by_id.get("OBX", [])
    ]
    return out, msh


def ack(msh, code, text):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    clean = (text or "").replace("\r", " ").replace("\n", " ")
    for ch, esc in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        clean = clean.replace(ch, esc)
    clean = clean[:500]
    return (
        f"MSH|^~\\&|{field(msh, 5)}|{field(msh, 6)}|{field(msh, 3)}|{field(msh, 4)}|{now}||"
        f"ACK^R01^ACK|ACK{next(_ack_ids)}|P|2.5.1\r"
        f"MSA|{code}|{field(msh, 10)}|{clean}\r"
    )


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        buffer = b""
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                start = buffer.find(VT)
                end = buffer.find(FS, start + 1 if start >= 0 else 0)
                if start < 0 or end < 0:
                    if len(buffer) > MAX_FRAME:
                        return
                    break
                frame = buffer[start + 1 : end]
                buffer = buffer[end + 1 :]
                if buffer.startswith(CR):
                    buffer = buffer[1:]
                answer = self.server.judge(frame.decode("utf-8", errors="replace"))
                self.request.sendall(VT + answer.encode("utf-8") + FS + CR)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, out, reject_first):
        super().__init__(address, Handler)
        self.out = out
        self.reject_first = reject_first

    def judge(self, text):
        record, msh = summary(text)
        with _lock:
            n = next(_count)
        errors = []
        if not msh:
            code = "AR"
            errors.append("no MSH segment")
        elif n <= self.reject_first:
            code = "AR"
            errors.append("receiver busy (test)")
        else:
            try:
                message = parser.parse_message(
                    text.replace("\n", "\r"),
                    validation_level=VALIDATION_LEVEL.STRICT,
                    find_groups=True,
                )
                message.validate()
                code = "AA"
            except Exception as e:  # hl7apy raises many types; each is a refusal
                code = "AE"
                errors.append(f"{type(e).__name__}: {e}")
        record["ack"] = code
        record["errors"] = errors
        with _lock:
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        return ack(msh, code, "; ".join(errors))


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--out", required=True)
    args.add_argument("--reject-first", type=int, default=0)
    args.add_argument("--host", default="127.0.0.1")
    a = args.parse_args()
    server = Server((a.host, a.port), a.out, a.reject_first)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
