#!/usr/bin/env python3
"""A TLS front for a plain-TCP peer in mxnode's end-to-end tests.

It owns: accepting TLS (1.2 or newer) on 127.0.0.1 with a test certificate, and
relaying the decrypted bytes both ways to a backend port on 127.0.0.1 (the
s3s-fs store, which speaks plain HTTP), so the node's S3 client is tested over
HTTPS against its connection's `ca`.

It must never: look at, keep or write the bytes it relays, listen on anything
but 127.0.0.1, or need anything beyond the Python 3.11 standard library.
"""

import argparse
import os
import socket
import ssl
import threading
import time

# Bytes relayed per read.
CHUNK_BYTES = 64 * 1024

# A connection idle this long in either direction is closed.
IDLE_TIMEOUT_SECONDS = 300


def pump(source, sink):
    """Copies bytes from source to sink until either side closes."""
    try:
        while True:
            data = source.recv(CHUNK_BYTES)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, context, backend_port):
    """Handshakes with one client and relays it to the backend."""
    try:
        client.settimeout(IDLE_TIMEOUT_SECONDS)
        tls = context.wrap_socket(client, server_side=True)
        backend = socket.create_connection(("127.0.0.1", backend_port), timeout=IDLE_TIMEOUT_SECONDS)
    except OSError:
        client.close()
        return
    threading.Thread(target=pump, args=(backend, tls), daemon=True).start()
    pump(tls, backend)


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
    parser.add_argument("--backend", type=int, required=True, help="backend port on 127.0.0.1")
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, context, args.backend), daemon=True).start()


if __name__ == "__main__":
    main()
