#!/usr/bin/env python3
"""A real HTTPS webhook receiver for mxnode's end-to-end tests.

It owns: answering POSTs with a status chosen by the request path, recording
every POST (headers, body, Standard Webhooks signature check) in memory, and
serving those records to the test over `GET /_received`.

It must never: write a received body anywhere (tests scan temp directories
for content markers, so a copy on disk would be a false alarm), listen on
anything but 127.0.0.1, or need anything beyond the Python 3.11 standard
library (the test machines install only `python3`).

Routes (POST): /ok, /status/<code>, /delay/<ms>/status/<code>,
/fail-first/<n>/status/<code>, /reset, /hang. Anything else answers 404.
Faults at random, per request: /flaky/<percent> (500 that often, else 200),
/flaky-reset/<percent> (TCP reset that often, else 200), /slow/<max_ms>
(200 after 0..max_ms). /sink answers 200 and keeps only the body's length and
SHA-256 (for bulk tests whose bodies would not fit in memory many times).
Control: GET /_received (JSON list of records), DELETE /_received (clear).
Each record names the TLS connection it came on (`connection`, counting from 1
in accept order) and `http_version` "1.1", so a test can count connections.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Bodies above this are refused with 413 without being read: mxnode's largest
# configurable message, base64-inflated into JSON, stays well below it.
MAX_BODY_BYTES = 200 * 1024 * 1024

# Standard Webhooks: receivers should refuse timestamps further than this from now.
TIMESTAMP_TOLERANCE_SECONDS = 5 * 60

# An idle keep-alive connection (or a client that never finishes its TLS
# handshake) is dropped after this long, so threads do not pile up.
CONNECTION_IDLE_TIMEOUT_SECONDS = 300

# `/hang` sleeps this long: longer than any webhook budget a test configures.
HANG_SECONDS = 3600

# Chunk-size lines of a chunked body longer than this are malformed.
MAX_CHUNK_LINE_BYTES = 1024


def standard_webhooks_key(secret):
    """The HMAC key of a `whsec_…` secret: base64 of the part after the prefix."""
    if secret.startswith("whsec_"):
        secret = secret[len("whsec_"):]
    return base64.b64decode(secret)


def expected_signature(key, webhook_id, timestamp, body):
    """`v1,<base64>` over `<id>.<timestamp>.<body>` per Standard Webhooks."""
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signature_is_valid(key, headers, body):
    """True when any `v1,` entry of `webhook-signature` matches (constant time)."""
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if webhook_id is None or timestamp is None or signatures is None:
        return False
    expected = expected_signature(key, webhook_id, timestamp, body).encode()
    valid = False
    for entry in signatures.split(" "):
        version, _, candidate = entry.partition(",")
        if version != "v1":
            continue
        # Keep comparing after a match so the time does not depend on position.
        if hmac.compare_digest(expected, candidate.encode()):
            valid = True
    return valid


def timestamp_is_fresh(headers, now):
    """True when `webhook-timestamp` is integer unix seconds within tolerance."""
    value = headers.get("webhook-timestamp")
    if value is None or not re.fullmatch(r"[0-9]{1,12}", value):
        return False
    return abs(now - int(value)) <= TIMESTAMP_TOLERANCE_SECONDS


class BodyTooLarge(Exception):
    """The declared or chunked body exceeds MAX_BODY_BYTES."""


class BadRequest(Exception):
    """The request framing cannot be understood."""


class Store:
    """All records and the per-path failure counters, in memory, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = []
        self.fail_counts = {}

    def add(self, record):
        with self.lock:
            self.records.append(record)

    def set_status(self, record, status):
        with self.lock:
            record["status"] = status
            record["acknowledged"] = status is not None and 200 <= status < 300

    def snapshot(self):
        with self.lock:
            return json.dumps(self.records)

    def clear(self):
        with self.lock:
            self.records.clear()
            self.fail_counts.clear()

    def count_request(self, path):
        """Number of earlier requests on this exact path, then counts this one."""
        with self.lock:
            seen = self.fail_counts.get(path, 0)
            self.fail_counts[path] = seen + 1
            return seen


def plan_for(path, store):
    """What to do for a POST path: ("answer", status, delay_s) / ("reset",) / ("hang",)."""
    if path in ("/ok", "/sink"):
        return ("answer", 200, 0.0)
    if path == "/reset":
        return ("reset",)
    if path == "/hang":
        return ("hang",)
    m = re.fullmatch(r"/status/([2-5][0-9][0-9])", path)
    if m:
        return ("answer", int(m.group(1)), 0.0)
    m = re.fullmatch(r"/delay/([0-9]{1,9})/status/([2-5][0-9][0-9])", path)
    if m:
        return ("answer", int(m.group(2)), int(m.group(1)) / 1000.0)
    m = re.fullmatch(r"/fail-first/([0-9]{1,9})/status/([2-5][0-9][0-9])", path)
    if m:
        failures, status = int(m.group(1)), int(m.group(2))
        seen = store.count_request(path)
        return ("answer", 500 if seen < failures else status, 0.0)
    m = re.fullmatch(r"/flaky/([0-9]{1,3})", path)
    if m:
        return ("answer", 500 if random.randrange(100) < int(m.group(1)) else 200, 0.0)
    m = re.fullmatch(r"/flaky-reset/([0-9]{1,3})", path)
    if m:
        return ("reset",) if random.randrange(100) < int(m.group(1)) else ("answer", 200, 0.0)
    m = re.fullmatch(r"/slow/([0-9]{1,9})", path)
    if m:
        return ("answer", 200, random.randint(0, int(m.group(1))) / 1000.0)
    return ("answer", 404, 0.0)


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as a real receiver behind a load
    # balancer would; every answer therefore carries Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "mxnode-test-receiver"

    def setup(self):
        super().setup()
        # One handler instance serves one connection, however many requests it carries.
        self.connection_number = self.server.next_connection_number()

    def log_message(self, format, *args):
        if self.server.verbose:
            sys.stderr.write("receiver: " + (format % args) + "\n")

    def do_GET(self):
        if self.path == "/_received":
            self.answer(200, self.server.store.snapshot().encode(), "application/json")
        else:
            self.answer(404, b"not found\n")

    def do_DELETE(self):
        if self.path == "/_received":
            self.server.store.clear()
            self.answer(200, b"{}", "application/json")
        else:
            self.answer(404, b"not found\n")

    def do_POST(self):
        try:
            body = self.read_body()
        except BodyTooLarge:
            self.close_connection = True
            self.answer(413, b"body too large\n")
            return
        except BadRequest as error:
            self.close_connection = True
            self.answer(400, str(error).encode() + b"\n")
            return

        now = time.time()
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = value if name not in headers else headers[name] + ", " + value
        if self.path == "/sink":
            text, parsed = "", None
        else:
            text = body.decode("utf-8", errors="replace")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        record = {
            "path": self.path,
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "time": now,
            "headers": headers,
            "raw_body": text,
            "json": parsed,
            "signature_valid": signature_is_valid(self.server.key, headers, body),
            "timestamp_fresh": timestamp_is_fresh(headers, now),
            "status": None,
            "acknowledged": False,
            "connection": self.connection_number,
            "http_version": "1.1",
        }
        # Recorded before answering so a test can see requests that hang or
        # are reset; the status is filled in once it is known.
        self.server.store.add(record)

        plan = plan_for(self.path, self.server.store)
        if plan[0] == "reset":
            self.abort_connection()
            return
        if plan[0] == "hang":
            time.sleep(HANG_SECONDS)
            self.close_connection = True
            return
        _, status, delay = plan
        if delay:
            time.sleep(delay)
        self.server.store.set_status(record, status)
        self.answer(status, b"{}", "application/json")

    def read_body(self):
        """The request body, by Content-Length or chunked framing, bounded."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BadRequest("unsupported transfer-encoding")
            return self.read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not re.fullmatch(r"[0-9]{1,12}", length.strip()):
            raise BadRequest("invalid content-length")
        length = int(length)
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge()
        body = self.rfile.read(length)
        if len(body) != length:
            raise BadRequest("body shorter than content-length")
        return body

    def read_chunked(self):
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE_BYTES)
            size_text = line.split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,8}", size_text):
                raise BadRequest("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                # Skip trailers up to the empty line.
                while self.rfile.readline(MAX_CHUNK_LINE_BYTES) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise BodyTooLarge()
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BadRequest("truncated chunk")
            parts.append(chunk)
            self.rfile.readline(MAX_CHUNK_LINE_BYTES)

    def answer(self, status, body, content_type="text/plain"):
        self.send_response(status)
        if status in (204, 304):
            # These statuses have no body by definition (RFC 9110 15.3.5,
            # 15.4.5); sending one would desynchronise a keep-alive client.
            body = b""
        else:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def abort_connection(self):
        """Close with a TCP reset and no answer, like a crashed receiver."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class TlsServer(ThreadingHTTPServer):
    """Accepts on the main thread and does the TLS handshake on the connection's
    own thread, so a client that never completes a handshake (or speaks plain
    HTTP) cannot stall everyone else."""

    daemon_threads = True
    # The node may open a hundred connections at once; socketserver's default
    # backlog of 5 would drop SYNs and stall them for a retransmission.
    request_queue_size = 128

    def __init__(self, address, tls_context, key, verbose):
        super().__init__(address, Handler)
        self.tls_context = tls_context
        self.key = key
        self.verbose = verbose
        self.store = Store()
        self.connections_lock = threading.Lock()
        self.connections = 0

    def next_connection_number(self):
        with self.connections_lock:
            self.connections += 1
            return self.connections

    def finish_request(self, request, client_address):
        request.settimeout(CONNECTION_IDLE_TIMEOUT_SECONDS)
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            if self.verbose:
                sys.stderr.write(f"receiver: TLS handshake failed: {error}\n")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError):
            # The peer went away mid-request; nothing to answer.
            pass
        finally:
            tls.close()


def exit_when_orphaned():
    """Stop when the test process that started us dies without killing us."""
    parent = os.getppid()
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="server certificate chain, PEM")
    parser.add_argument("--key", required=True, help="server private key, PEM")
    parser.add_argument("--secret", required=True, help="Standard Webhooks secret, whsec_…")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    server = TlsServer(("127.0.0.1", args.port), context, standard_webhooks_key(args.secret), args.verbose)
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
