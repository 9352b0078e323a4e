#!/usr/bin/env python3
"""A FHIR R4 transaction endpoint for tests: the independent peer radserve pushes to.

Usage:
    fhir_receiver.py --port PORT --out FILE.jsonl [--schema PATH] [--fail-first N]
                     [--host 127.0.0.1]

Binds (PORT 0: a free port), prints `listening <port>` on stdout, then answers POSTs of a
transaction Bundle (to any path: the base):
- the first N requests (--fail-first): 503 with `Retry-After: 1` and an OperationOutcome;
- a body that is not JSON, not a `transaction` Bundle, fails HL7's FHIR R4 JSON Schema
  (validated with `jsonschema`, offline, against the committed subset
  fhir-r4-subset.schema.json beside this script, see extract_schema_subset.py), or has an
  entry whose request is not `PUT Type/id` naming its resource (or a POST): 400 with an
  OperationOutcome listing every error with its JSON path;
- otherwise 200 with a `transaction-response` Bundle: `201 Created` for a Type/id seen the
  first time, `200 OK` (a new version) after.
Anything else is 404. Each request is appended to --out as one JSON object: n, status,
content_type, authorization, errors, bundle.
"""

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema

MAX_BODY = 64 << 20


def outcome(code, messages):
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": code, "diagnostics": m} for m in messages
        ],
    }


class State:
    def __init__(self, out, schema, fail_first):
        self.out = out
        jsonschema.Draft6Validator.check_schema(schema)
        # Against a definition directly: the root's oneOf would only say "not valid under
        # any of the given schemas".
        self.definitions = schema["definitions"]
        self.validators = {}
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.count = 0
        self.versions = {}

    def validator(self, kind):
        if kind not in self.validators:
            self.validators[kind] = jsonschema.Draft6Validator(
                {"definitions": self.definitions, "$ref": f"#/definitions/{kind}"}
            )
        return self.validators[kind]

    def errors_of(self, bundle):
        errors = []
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return ["not a Bundle"]
        if bundle.get("type") != "transaction":
            errors.append(f"Bundle.type {bundle.get('type')!r}: expected 'transaction'")
        for e in sorted(self.validator("Bundle").iter_errors(bundle), key=lambda e: list(e.absolute_path)):
            path = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{path}: {e.message}"[:1000])
        for i, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource") or {}
            kind = resource.get("resourceType")
            if kind not in self.definitions:
                errors.append(f"entry/{i}/resource: resourceType {kind!r} is not one we accept")
                continue
            for e in self.validator(kind).iter_errors(resource):
                path = "/".join(str(p) for p in e.absolute_path)
                errors.append(f"entry/{i}/resource/{path}: {e.message}"[:1000])
        for i, entry in enumerate(bundle.get("entry") or []):
            request = entry.get("request") or {}
            resource = entry.get("resource") or {}
            method, url = request.get("method"), request.get("url", "")
            if method == "PUT":
                expected = f"{resource.get('resourceType')}/{resource.get('id')}"
                if url != expected:
                    errors.append(f"entry/{i}/request/url {url!r}: expected {expected!r}")
            elif method != "POST":
                errors.append(f"entry/{i}/request/method {method!r}: expected PUT or POST")
        return errors


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer(404, outcome("not-found", [f"GET {self.path}: only POST is served"]))

    def do_PUT(self):
        self.do_GET()

    def do_POST(self):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY))
        with state.lock:
            state.count += 1
            n = state.count
        bundle, errors, headers = None, [], ()
        if n <= state.fail_first:
            status = 503
            body = outcome("transient", ["unavailable (test)"])
            headers = (("Retry-After", "1"),)
        else:
            try:
                bundle = json.loads(raw)
            except ValueError as e:
                errors = [f"body is not JSON: {e}"]
            if bundle is not None:
                errors = state.errors_of(bundle)
            if errors:
                status, body = 400, outcome("invalid", errors)
            else:
                status, entries = 200, []
                with state.lock:
                    for entry in bundle.get("entry") or []:
                        resource = entry.get("resource") or {}
                        key = f"{resource.get('resourceType')}/{resource.get('id')}"
                        version = state.versions.get(key, 0) + 1
                        state.versions[key] = version
                        entries.append({
                            "response": {
                                "status": "201 Created" if version == 1 else "200 OK",
                                "location": f"{key}/_history/{version}",
                            }
                        })
                body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        record = {
            "n": n,
            "status": status,
            "content_type": self.headers.get("Content-Type"),
            "authorization": self.headers.get("Authorization"),
            "errors": errors,
            "bundle": bundle,
        }
        with state.lock:
            with open(state.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        self.answer(status, body, headers)


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--out", required=True)
    args.add_argument(
        "--schema", default=str(Path(__file__).with_name("fhir-r4-subset.schema.json"))
    )
    args.add_argument("--fail-first", type=int, default=0)
    args.add_argument("--host", default="127.0.0.1")
    a = args.parse_args()
    with open(a.schema, encoding="utf-8") as f:
        schema = json.load(f)
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.state = State(a.out, schema, a.fail_first)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
