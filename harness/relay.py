"""A guestfwd relay: QEMU's user network runs this for every connection a guest opens to
a forwarded address, with that connection as stdin (and stdout, stderr: never print).
It connects to 127.0.0.1:PORT on the host and copies bytes both ways until both sides
have finished. When nothing listens on the host (a server that is down) or a side resets,
it closes the guest's connection without a word: a traceback on stderr would reach the
guest as data.
Usage: python3 -I -S relay.py PORT
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys


def relay(guest: socket.socket, host: socket.socket) -> None:
    peers = {guest: host, host: guest}
    reading = set(peers)
    while reading:
        for sock in select.select(list(reading), [], [])[0]:
            data = sock.recv(65536)
            if data:
                peers[sock].sendall(data)
                continue
            # One side finished sending: pass that on, keep the other direction open.
            reading.discard(sock)
            with contextlib.suppress(OSError):
                peers[sock].shutdown(socket.SHUT_WR)


def main(port: int) -> int:
    guest = socket.socket(fileno=0)
    try:
        host = socket.create_connection(("127.0.0.1", port))
    except OSError:
        return 1
    try:
        relay(guest, host)
    except OSError:  # e.g. the server killed mid-connection: reset
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
