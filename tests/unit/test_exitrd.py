"""The exitrd's plan, the digest its image is installed by, and the unit that runs the
shell loader (bookend/data/load-exitrd.sh, tested in test_exitrd_store.py)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, EntryKind
from bookend.build import write_digest, write_image
from bookend.closure import Closure, ClosureEntry
from bookend.errors import ArchiveError
from bookend.exitrd import make_exitrd_plan
from bookend.exitrd_store import install_exitrd, seal_tree
from bookend.features.base import RequestKind
from bookend.install import LoadAt, install_exitrd_unit, unit_text
from bookend.plan import Plan
from tests.unit.conftest import load_config

ENTRIES = (
    ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/usr/lib", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/usr/lib/shutdown-tool", EntryKind.FILE, 0o755, data=b"#!/bin/sh\n"),
    ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target="usr/lib/shutdown-tool"),
    ArchiveEntry("/oldroot", EntryKind.DIRECTORY, 0o755),
)


def test_exitrd_plan_has_shutdown_release_and_no_dm_tools(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree)})
    initrd = Plan(features=("systemd", "dm", "luks", "lvm"), requests=(), generated=())
    plan = make_exitrd_plan(config, initrd)
    generated = {g.entry.path: g.entry for g in plan.generated}
    assert generated["/shutdown"].target == "usr/lib/systemd/systemd-shutdown"
    assert b'VARIANT_ID="bookend-exitrd"' in (generated["/etc/initrd-release"].data or b"")
    assert generated["/oldroot"].kind is EntryKind.DIRECTORY
    programs = {r.name for r in plan.requests if r.kind is RequestKind.EXECUTABLE}
    assert "/usr/lib/systemd/systemd-shutdown" in programs
    # systemd-shutdown removes DM devices itself: no dmsetup, lvm or cryptsetup.
    assert not programs & {"dmsetup", "lvm", "systemd-run", "/usr/lib/systemd/systemd-cryptsetup"}
    assert "mdadm" not in programs  # the initrd has no MD RAID
    # No kernel modules: the running kernel has them loaded already.
    assert not any(r.kind is RequestKind.MODULE for r in plan.requests)


def exitrd_image(root_tree: Path, tmp_path: Path, compress: str = "zstd") -> Path:
    image = tmp_path / "exitrd.img"
    config = load_config(
        None, {"sysroot": str(root_tree), "output": str(image), "compress": compress}
    )
    entries = {e.path: ClosureEntry(e, "test", None) for e in ENTRIES}
    write_image(config, Closure(entries))
    write_digest(image)
    return image


@pytest.mark.parametrize("compress", ["zstd", "xz", "gzip", "none"])
def test_install_takes_a_checked_image_whatever_its_compression(
    root_tree: Path, tmp_path: Path, compress: str
) -> None:
    image = exitrd_image(root_tree, tmp_path, compress)
    digest = (tmp_path / "exitrd.img.sha256").read_text()
    assert digest == f"{hashlib.sha256(image.read_bytes()).hexdigest()}  exitrd.img\n"
    root = tmp_path / "root"
    root.mkdir()
    installed = install_exitrd(image, root, None)
    tree = installed.store / installed.digest / "tree"
    assert seal_tree(tree).digest == installed.digest
    assert stat.S_IMODE(tree.stat().st_mode) == 0o700
    assert os.readlink(tree / "shutdown") == "usr/lib/shutdown-tool"
    assert os.access(tree / "shutdown", os.X_OK)
    assert (tree / "oldroot").is_dir()


@pytest.mark.parametrize("fault", ["damaged", "other digest", "no digest", "empty digest"])
def test_install_refuses_an_image_its_digest_does_not_match(
    root_tree: Path, tmp_path: Path, fault: str
) -> None:
    image = exitrd_image(root_tree, tmp_path)
    digest = tmp_path / "exitrd.img.sha256"
    if fault == "damaged":
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 1
        image.write_bytes(data)
    elif fault == "other digest":
        digest.write_text(f"{hashlib.sha256(b'other').hexdigest()}  exitrd.img\n")
    elif fault == "no digest":
        digest.unlink()
    else:
        digest.write_text("")
    message = {
        "damaged": r"SHA-256 \w+ does not match .*exitrd.img.sha256",
        "other digest": r"SHA-256 \w+ does not match .*exitrd.img.sha256",
        "no digest": "cannot read it or its digest: No such file",
        "empty digest": "cannot read it or its digest: empty digest file",
    }[fault]
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ArchiveError, match=message) as caught:
        install_exitrd(image, root, None)
    assert "\n" not in str(caught.value)
    assert os.listdir(root) == []  # nothing installed, not even the store


def test_unit_runs_the_shell_loader_at_shutdown_by_default_or_at_boot(tmp_path: Path) -> None:
    at_shutdown = unit_text(LoadAt.SHUTDOWN)
    load = "/usr/lib/bookend/load-exitrd"
    # At shutdown by default, checked at boot (a failed check leaves the unit up).
    assert f"ExecStop={load}\n" in at_shutdown
    # The copy at shutdown first in line for the CPU; the check at boot last (19).
    assert "Nice=-20\n" in at_shutdown and f"ExecStart=-nice -n 39 {load} check\n" in at_shutdown
    assert "Type=exec\n" in at_shutdown  # nothing at boot waits for the check
    assert "RequiresMountsFor=/usr/lib/bookend/exitrd\n" in at_shutdown
    assert "Environment=" not in at_shutdown and "python3" not in at_shutdown
    at_boot = unit_text(LoadAt.BOOT)
    assert f"ExecStart={load}\n" in at_boot and "ExecStop" not in at_boot.split("[Service]")[1]
    assert "Type=oneshot\n" in at_boot  # `systemctl start` returns with the copy made
    assert "Nice=" not in at_boot
    unit_dir = tmp_path / "units"
    unit = install_exitrd_unit(LoadAt.SHUTDOWN, unit_dir)
    link = unit_dir / "multi-user.target.wants/bookend-exitrd.service"
    assert os.readlink(link) == "../bookend-exitrd.service" and link.resolve() == unit
