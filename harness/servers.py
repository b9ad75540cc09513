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


class Tgtd:
    """tgtd serving each raw file as LUN 1 of its target (IQN -> file) on 127.0.0.1:port,
    with a control port of its own (tgtd's socket.N), so it never meets a system tgtd.
    It can be stopped and started again on the same port with the same targets, as a
    server that goes away and comes back."""

    def __init__(self, luns: dict[str, Path], log: Path) -> None:
        self.luns = dict(luns)
        self.log = log
        self.port, self.control = free_loopback_port(), free_control_port()
        self._server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Serve every target, and only then listen on the port: a login that came back
        first (the initiator reconnecting after an outage) would find a target missing
        and be refused. So tgtd starts on a port of its own, the targets are made, then
        the port is opened."""
        staging = free_loopback_port()
        argv = ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal={LOOPBACK}:{staging}"]
        with self.log.open("a") as output:
            self._server = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        wait_listening(staging, self._server)
        for tid, (iqn, backing) in enumerate(self.luns.items(), start=1):
            tgtadm(self.control, "--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
            tgtadm(self.control, "--op", "new", "--mode", "logicalunit", "--tid", str(tid),
                   "--lun", "1", "--backing-store", str(backing))  # fmt: skip
            tgtadm(self.control, "--op", "bind", "--mode", "target", "--tid", str(tid),
                   "--initiator-address", "ALL")  # fmt: skip
        for op, port in (("new", self.port), ("delete", staging)):
            tgtadm(self.control, "--op", op, "--mode", "portal", "--param",
                   f"portal={LOOPBACK}:{port}")  # fmt: skip
        wait_listening(self.port, self._server)

    def stop(self, grace: float = 30) -> None:
        """Offline, then told to exit; killed if it has not after grace seconds (it will
        not while initiators are logged in). Its connections end either way."""
        if self._server is not None:
            stop_tgtd(self._server, self.control, grace)
            self._server = None


@contextlib.contextmanager
def iscsi_server(luns: dict[str, Path], log: Path) -> Iterator[Tgtd]:
    """A started Tgtd (see there), stopped on exit."""
    server = Tgtd(luns, log)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_iscsi(luns: dict[str, Path], log: Path) -> Iterator[int]:
    """tgtd serving luns (IQN -> raw file) on 127.0.0.1, the port yielded; see Tgtd.

    tgtd ignores SIGTERM while it serves: it is taken offline and told to exit through
    its control socket, killed only if that fails.
    """
    with iscsi_server(luns, log) as server:
        yield server.port


def stop_tgtd(server: subprocess.Popen[bytes], control: int, grace: float = 30) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        tgtadm(control, "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline")
        tgtadm(control, "--op", "delete", "--mode", "system")
    try:
        server.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)
    for leftover in (f"socket.{control}", f"socket.{control}.lock"):
        (TGT_SOCKETS / leftover).unlink(missing_ok=True)
