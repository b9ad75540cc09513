"""Servers on the host's loopback for guests whose root comes over the network.

A guest reaches them only through a restricted user network's forward
(harness/network.py `user_network(relayed=...)`), so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import random
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


ISCSI_PORT = 3260
TGT_SOCKETS = Path("/var/run/tgtd")


def tgtadm(control: int, *args: str) -> None:
    subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], check=True,
                   capture_output=True)  # fmt: skip


def free_control_port() -> int:
    """A number for tgtd's control socket (it takes up to 32767) that no tgtd uses."""
    taken = {path.name for path in TGT_SOCKETS.glob("socket.*")} if TGT_SOCKETS.exists() else set()
    choices = [n for n in range(1000, 32768) if f"socket.{n}" not in taken]
    return random.choice(choices)


@contextlib.contextmanager
def serve_iscsi(luns: dict[str, Path], log: Path) -> Iterator[int]:
    """tgtd serving each raw file as LUN 1 of its target (IQN -> file) on 127.0.0.1.

    A free port (yielded) and a control port of its own (tgtd's socket.N), so it never
    meets a system tgtd. tgtd ignores SIGTERM while it serves: it is taken offline and
    told to exit through its control socket, killed only if that fails.
    """
    port, control = free_loopback_port(), free_control_port()
    argv = ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={LOOPBACK}:{port}"]
    with log.open("w") as output:
        server = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, server)
            for tid, (iqn, backing) in enumerate(luns.items(), start=1):
                tgtadm(control, "--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
                tgtadm(control, "--op", "new", "--mode", "logicalunit", "--tid", str(tid),
                       "--lun", "1", "--backing-store", str(backing))  # fmt: skip
                tgtadm(control, "--op", "bind", "--mode", "target", "--tid", str(tid),
                       "--initiator-address", "ALL")  # fmt: skip
            yield port
        finally:
            stop_tgtd(server, control)


def stop_tgtd(server: subprocess.Popen[bytes], control: int) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        tgtadm(control, "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline")
        tgtadm(control, "--op", "delete", "--mode", "system")
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)
    for leftover in (f"socket.{control}", f"socket.{control}.lock"):
        (TGT_SOCKETS / leftover).unlink(missing_ok=True)
