"""Servers on the host's loopback for guests whose root comes over the network.

A guest reaches them only through a restricted user network's forward
(harness/network.py `user_network(relayed=...)`), so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from harness.network import LOOPBACK, free_loopback_port


def wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Return once something accepts on LOOPBACK:port; fail if server exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server on port {port} exited with status {server.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {LOOPBACK}:{port} after {timeout:g} s")


@contextlib.contextmanager
def serve_nbd(image: Path, image_format: str, log: Path) -> Iterator[int]:
    """qemu-nbd serving image on 127.0.0.1 (a free port, yielded), stopped on exit.

    Persistent, so a client may disconnect and connect again. Stopped with SIGTERM,
    after which the image is closed and flushed.
    """
    port = free_loopback_port()
    argv = ["qemu-nbd", "--persistent", "--shared=4", f"--bind={LOOPBACK}", f"--port={port}",
            f"--format={image_format}", "--cache=writeback", str(image)]  # fmt: skip
    with log.open("w") as output:
        server = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=60)
