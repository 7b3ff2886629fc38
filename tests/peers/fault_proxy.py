#!/usr/bin/env python3
"""A TCP proxy that breaks connections mid-stream, for mxnode's fault tests.

It owns: accepting plain TCP on 127.0.0.1, relaying each connection to a
backend port on 127.0.0.1 (e.g. the s3s-fs store), and, for a chosen share of
connections, resetting both sides after a random number of bytes from the
client between half of --cut-window and --cut-window: an upload that fails
half way, as when a store or a load balancer in front of it dies. Small
requests (a bucket check) pass; every connection is marked for a cut until
the first cut has happened, so each run breaks at least one upload whatever
the dice say.

It must never: keep or write the bytes it relays, listen on anything but
127.0.0.1, or need anything beyond the Python 3.11 standard library.
"""

import argparse
import os
import random
import socket
import struct
import threading
import time

# Bytes relayed per read.
CHUNK_BYTES = 64 * 1024

# A connection idle this long in either direction is closed.
IDLE_TIMEOUT_SECONDS = 300

# Set once a connection has been reset.
first_cut_done = threading.Event()


def reset(*sockets):
    """Closes with a TCP reset (SO_LINGER 0), like a crashed peer."""
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass


def pump(source, sink, cut_at=None):
    """Copies bytes until either side closes, or resets both once cut_at bytes passed."""
    relayed = 0
    try:
        while True:
            data = source.recv(CHUNK_BYTES)
            if not data:
                break
            if cut_at is not None and relayed + len(data) >= cut_at:
                sink.sendall(data[: max(0, cut_at - relayed)])
                reset(source, sink)
                first_cut_done.set()
                return
            sink.sendall(data)
            relayed += len(data)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(client, backend_port, cut_percent, cut_window):
    try:
        client.settimeout(IDLE_TIMEOUT_SECONDS)
        backend = socket.create_connection(("127.0.0.1", backend_port), timeout=IDLE_TIMEOUT_SECONDS)
    except OSError:
        client.close()
        return
    cut = not first_cut_done.is_set() or random.randrange(100) < cut_percent
    cut_at = random.randint(max(1, cut_window // 2), cut_window) if cut else None
    threading.Thread(target=pump, args=(backend, client), daemon=True).start()
    pump(client, backend, cut_at)


def exit_when_orphaned():
    """Stop when the test process that started us dies without killing us."""
    parent = os.getppid()
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", type=int, required=True, help="backend port on 127.0.0.1")
    parser.add_argument("--cut-percent", type=int, default=50, help="share of connections cut")
    parser.add_argument("--cut-window", type=int, default=200_000,
                        help="a cut connection is reset after half to all of this many client bytes")
    args = parser.parse_args()

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=serve, args=(client, args.backend, args.cut_percent, args.cut_window), daemon=True
        ).start()


if __name__ == "__main__":
    main()
