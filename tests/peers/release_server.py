#!/usr/bin/env python3
"""An update channel for mxnode's tests (the appliance VM and the API): static files over HTTPS.

It owns: serving the files of one directory (GET and HEAD, e.g. a signed release's
manifest.json, manifest.json.sig and artifacts) over TLS 1.2 or newer on 127.0.0.1 with a
test certificate, and printing one line per answered request (`served <status> <path>`) so
the test sees what the node fetched. The directory is looked up again on every request, so
the test switches releases by re-pointing a symlink.

It must never: serve anything outside that directory, list directories, listen on anything
but 127.0.0.1, or need anything beyond the Python 3.11 standard library.
"""

import argparse
import functools
import http.server
import os
import ssl
import sys
import threading
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without directory listings, logging one line per request."""

    def setup(self):
        # The TLS handshake happens here, in the request's own thread, not in the accept loop.
        self.request.do_handshake()
        super().setup()

    def list_directory(self, path):
        self.send_error(404, "no listings")
        return None

    def log_request(self, code="-", size="-"):
        print(f"served {code} {self.path}", flush=True)

    def log_message(self, format, *args):
        pass


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
    parser.add_argument("--root", required=True, help="directory (or symlink to one) to serve")
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    handler = functools.partial(Handler, directory=args.root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
