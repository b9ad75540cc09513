"""`bookend boot-test` with no --disk (issue 18): the sysroot itself is the root, shared
read-only by QEMU over 9p and made writable in RAM by the initrd's
systemd-volatile-root.service. The cached Debian 13 tree is the sysroot (its own kernel
boots): the image is built on the spot with the sysroot-share feature, the root prints
this boot's token and reaches its default target, the power-off goes through the
exitrd, and the tree is exactly as it was (every path's size, mode and mtime) although
the booted root wrote to it (journal, machine-id, /etc/.updated)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bookend.resolve import newest_kernel
from harness.images import bookend
from harness.ukisysroot import ensure_trixie_sysroot


def listing(tree: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under tree (not following links) with its size, mode and mtime."""
    found: dict[str, tuple[int, int, int]] = {}
    for top, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            info = os.lstat(path)
            found[os.path.relpath(path, tree)] = (info.st_size, info.st_mode, info.st_mtime_ns)
    return found


def test_boots_the_sysroot_shared_read_only_and_leaves_it_unchanged(tmp_path: Path) -> None:
    tree = ensure_trixie_sysroot()
    kver = newest_kernel(tree)
    assert kver is not None
    before = listing(tree)
    console = tmp_path / "console.log"
    result = bookend(
        "boot-test", "--json", "--accel", "tcg", "--sysroot", str(tree), "--kver", kver,
        "--kernel", str(tree / f"boot/vmlinuz-{kver}"), "--console-log", str(console),
        "--timeout", "600", check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["passed"], (report["reasons"], console)
    assert report["extra"]["shared_root"] == str(tree) and report["extra"]["disks"] == []
    phases = report["phases"]
    assert 0 < phases["init"] < phases["switch_root"] < phases["root_reached"]
    assert report["through_exitrd"]
    initrd_units = {unit["name"] for unit in report["initrd_units"]}
    assert {"sysroot.mount", "systemd-volatile-root.service"} <= initrd_units
    text = console.read_text(errors="replace")
    # The root ran this boot's script (the token's marks) on a 9p root under an overlay.
    assert "BOOKEND-BOOT-TEST" in text and "rootfstype=9p" in text
    assert listing(tree) == before
