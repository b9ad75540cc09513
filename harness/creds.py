"""systemd credentials the tests encrypt with a tree's own systemd-creds."""

from __future__ import annotations

import subprocess
from pathlib import Path


def encrypt_credential(sysroot: Path, name: str, value: str, *key: str) -> bytes:
    """value encrypted as credential name by sysroot's systemd-creds (run chrooted, so
    the credential's format is that systemd's); key: the --with-key=... arguments."""
    argv = ["chroot", str(sysroot), "systemd-creds", "encrypt", *key, f"--name={name}", "-", "-"]
    result = subprocess.run(argv, input=value.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout
