#!/usr/bin/env python3
"""A static HTTPS file server for mxnode's end-to-end tests: the update channel.

It owns: serving the files of one directory read-only over HTTPS (TLS 1.2 or
newer) on 127.0.0.1 with a test certificate, so the node's update agent polls a
real channel (`manifest.json`, its signature, the artifacts).

It must never: serve anything outside its directory, accept uploads, listen on
anything but 127.0.0.1, or need anything beyond the Python 3.11 standard library.
"""

import argparse
import functools
import http.server
import os
import ssl
import threading
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files only; no directory listings, no access log."""

    def list_directory(self, path):
        self.send_error(404, "no listings")
        return None

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
    parser.add_argument("--dir", required=True, help="the directory to serve")
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    handler = functools.partial(Handler, directory=args.dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
