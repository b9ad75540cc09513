"""A guestfwd relay: QEMU's user network runs this for every connection a guest opens to
a forwarded address, with that connection as stdin (and stdout, stderr: never print).
It connects to 127.0.0.1:PORT on the host and copies bytes both ways until both sides
have finished. When nothing listens on the host (a server that is down) or a side resets,
it closes the guest's connection without a word: a traceback on stderr would reach the
guest as data.

With WAIT_SECONDS, a server that is down is tried again for that long before the guest's
connection is closed, as long as the guest keeps it open: the guest sees a server host
that does not answer for a while (a target rebooting) rather than one that refuses.
Usage: python3 -I -S relay.py PORT [WAIT_SECONDS]
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time

# How often a server that is down is tried again.
RETRY_S = 0.2


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


def guest_gone(guest: socket.socket) -> bool:
    """The guest closed its connection, even with what it sent before still unread."""
    poller = select.poll()
    poller.register(guest, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))


def connect(port: int, wait: float, guest: socket.socket) -> socket.socket | None:
    deadline = time.monotonic() + wait
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() >= deadline or guest_gone(guest):
                return None
            time.sleep(RETRY_S)


def main(port: int, wait: float) -> int:
    guest = socket.socket(fileno=0)
    try:
        host = connect(port, wait, guest)
        if host is None:
            return 1
        relay(guest, host)
    except OSError:  # e.g. the server killed mid-connection: reset
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
