"""A small client for QEMU's machine protocol (QMP), to change a running guest's hardware.

QMP is JSON, one object a line, over the unix socket QEMU was started with
(`-qmp unix:PATH,server=on,wait=off`). QEMU greets first, and accepts commands only after
`qmp_capabilities`; events (e.g. DEVICE_DELETED) may arrive between a command and its
answer, so they are skipped while reading the answer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any


class QmpError(AssertionError):
    """QEMU refused a command; the message carries QEMU's own words."""


class Qmp:
    def __init__(self, path: Path, timeout: float = 30) -> None:
        self._socket = connect(path, timeout)
        self._socket.settimeout(timeout)
        self._lines = self._socket.makefile("r", encoding="utf-8")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"QEMU at {path} did not greet with QMP: {greeting}")
        self.execute("qmp_capabilities")

    def __enter__(self) -> Qmp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command and return its "return" value."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._socket.sendall(json.dumps(request).encode() + b"\n")
        while True:
            answer = self._read()
            if "return" in answer:
                return answer["return"]
            if "error" in answer:
                error = answer["error"]
                raise QmpError(f"{command} {arguments}: {error.get('desc', error)}")
            # Anything else is an asynchronous event, not our answer.

    def close(self) -> None:
        self._lines.close()
        self._socket.close()

    def _read(self) -> dict[str, Any]:
        line = self._lines.readline()
        if not line:
            raise QmpError("QEMU closed the QMP connection")
        message: dict[str, Any] = json.loads(line)
        return message


def connect(path: Path, timeout: float) -> socket.socket:
    """Connect once QEMU has made the socket; it does so while starting up."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
