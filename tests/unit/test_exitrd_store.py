"""The exitrd kept as a tree named by its digest: naming, the index and its garbage
collection, `install-exitrd --root`, the shell loader, and the digest in the initrd."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, EntryKind
from bookend.build import write_digest, write_image
from bookend.closure import Closure, ClosureEntry, with_exitrd
from bookend.errors import ArchiveError, ConfigError
from bookend.exitrd_store import (
    DIGEST_CONF,
    LOADER,
    STORE,
    initrd_entries,
    install_exitrd,
    read_index,
    seal_image,
    seal_tree,
)
from tests.unit.conftest import load_config

BASE = (
    ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/usr/lib", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/usr/lib/shutdown-tool", EntryKind.FILE, 0o755, data=b"#!/bin/sh\n"),
    ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target="usr/lib/shutdown-tool"),
    ArchiveEntry("/oldroot", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=os.makedev(5, 1)),
)


def image(root_tree: Path, directory: Path, *extra: ArchiveEntry) -> Path:
    """An exitrd image with its digest beside it, as `bookend build` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / "exitrd.img"
    config = load_config(None, {"sysroot": str(root_tree), "output": str(output)})
    entries = {e.path: ClosureEntry(e, "test", None) for e in (*BASE, *extra)}
    write_image(config, Closure(entries))
    write_digest(output)
    return output


@pytest.fixture
def images(root_tree: Path, tmp_path: Path) -> tuple[Path, Path]:
    one = image(root_tree, tmp_path / "one")
    two = image(root_tree, tmp_path / "two",
                ArchiveEntry("/etc", EntryKind.DIRECTORY, 0o755),
                ArchiveEntry("/etc/extra", EntryKind.FILE, 0o644, data=b"more\n"))  # fmt: skip
    return one, two


def test_digest_names_every_entry_and_nothing_else(root_tree: Path, tmp_path: Path) -> None:
    one = seal_image(image(root_tree, tmp_path / "a"))
    again = seal_image(image(root_tree, tmp_path / "b"))
    assert one.digest == again.digest == hashlib.sha256(one.sums).hexdigest()
    listing = one.listing.decode().splitlines()
    # The root as the loader leaves it (0700), the link with its target, no device node.
    assert listing[0] == "41c0 ."
    assert "a1ff ./shutdown -> usr/lib/shutdown-tool" in listing
    assert "81ed ./usr/lib/shutdown-tool" in listing
    assert not any("console" in line for line in listing)
    sums = one.sums.decode().splitlines()
    assert sums[0] == f"{hashlib.sha256(one.listing).hexdigest()}  -"
    tool = hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    assert sums[1] == f"{tool}  ./usr/lib/shutdown-tool"
    mode = seal_image(image(root_tree, tmp_path / "c", ArchiveEntry(
        "/oldroot/x", EntryKind.FILE, 0o600, data=b"")))  # fmt: skip
    assert mode.digest != one.digest


def test_install_root_keeps_a_tree_named_by_its_digest(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/initrd.img-1").write_bytes(b"")
    done = install_exitrd(images[0], root, "/boot/initrd.img-1")
    tree = root / STORE / done.digest / "tree"
    assert done.unpacked and done.removed == ()
    assert seal_tree(tree).digest == done.digest == seal_image(images[0]).digest
    assert os.readlink(tree / "shutdown") == "usr/lib/shutdown-tool"
    assert (root / STORE / "default").read_text() == done.digest + "\n"
    assert read_index(root / STORE) == {"/boot/initrd.img-1": done.digest}
    loader = root / LOADER
    assert loader.stat().st_mode & 0o111 and loader.read_bytes().startswith(b"#!/bin/sh\n")
    assert not install_exitrd(images[0], root, "/boot/initrd.img-1").unpacked


def test_old_exitrds_go_when_no_installed_initrd_names_them(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    for name in ("initrd.img-1", "initrd.img-2"):
        (root / "boot" / name).write_bytes(b"")
    first = install_exitrd(images[0], root, "/boot/initrd.img-1").digest
    # A kernel update: the new pair is installed, the running kernel's initrd stays.
    second = install_exitrd(images[1], root, "/boot/initrd.img-2").digest
    assert first != second
    assert {p.name for p in (root / STORE).iterdir()} >= {first, second}
    # The old kernel and its initrd removed: the next install drops its exitrd.
    (root / "boot/initrd.img-1").unlink()
    again = install_exitrd(images[1], root, "/boot/initrd.img-2")
    assert again.removed == (first,) and not (root / STORE / first).exists()
    assert read_index(root / STORE) == {"/boot/initrd.img-2": second}


def test_install_refuses_a_damaged_image_and_bad_names(
    images: tuple[Path, Path], tmp_path: Path
) -> None:
    data = bytearray(images[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    images[0].write_bytes(data)
    with pytest.raises(ArchiveError, match="does not match"):
        install_exitrd(images[0], tmp_path, None)
    with pytest.raises(ConfigError, match="--initrd boot/x: must be an absolute path"):
        install_exitrd(images[1], tmp_path, "boot/x")
    with pytest.raises(ConfigError, match=r"--root .*: no such directory"):
        install_exitrd(images[1], tmp_path / "none", None)


def load(root: Path, run: Path, *mode: str, path: str = "") -> subprocess.CompletedProcess[str]:
    """The installed shell loader, pointed at root's store and a /run of the test's;
    mode: "check" for the check at boot; path: directories searched before PATH."""
    env = {"PATH": path + os.environ["PATH"], "BOOKEND_EXITRD_STORE": str(root / STORE),
           "BOOKEND_EXITRD_TARGET": str(run / "initramfs"),
           "BOOKEND_EXITRD_DIGEST": str(run / "bookend/exitrd.sha256")}  # fmt: skip
    return subprocess.run(["sh", str(root / LOADER), *mode], env=env, capture_output=True,
                          text=True)  # fmt: skip


@pytest.fixture
def installed(images: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, str, str]:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/initrd.img-1").write_bytes(b"")
    one = install_exitrd(images[0], root, "/boot/initrd.img-1").digest
    two = install_exitrd(images[1], root, None).digest  # the default now
    run = tmp_path / "run"
    (run / "bookend").mkdir(parents=True)
    (run / "bookend/exitrd.sha256").write_text(one)  # no newline, as systemd-tmpfiles writes
    return root, run, one, two


def test_loader_copies_the_booted_initrds_exitrd(installed: tuple[Path, Path, str, str]) -> None:
    root, run, one, _ = installed
    done = load(root, run)
    assert done.returncode == 0, done.stderr
    assert f"exitrd {one} (from the initrd that booted" in done.stdout
    target = run / "initramfs"
    assert seal_tree(target).digest == one and (target.stat().st_mode & 0o777) == 0o700
    assert not (target / "etc/extra").exists()  # the other exitrd's file
    assert sorted(os.listdir(run)) == ["bookend", "initramfs"]  # no staging left


def test_loader_falls_back_to_the_latest_install(installed: tuple[Path, Path, str, str]) -> None:
    root, run, _, two = installed
    (run / "bookend/exitrd.sha256").unlink()
    done = load(root, run)
    assert done.returncode == 0, done.stderr
    assert f"exitrd {two} (from {root / STORE}/default" in done.stdout


def damage(installed: tuple[Path, Path, str, str], kind: str) -> None:
    """Change the booted initrd's installed exitrd the way kind says."""
    root, run, one, two = installed
    store = root / STORE
    tree = store / one / "tree"
    if kind == "sums":  # the other exitrd, its sums with it, where this one was
        (store / one / "sums").write_bytes((store / two / "sums").read_bytes())
    elif kind == "file":
        (tree / "usr/lib/shutdown-tool").write_bytes(b"#!/bin/sh\nevil\n")
    elif kind == "extra":
        (tree / "usr/lib/ld.so.preload").write_bytes(b"")
    elif kind == "mode":
        (tree / "usr/lib/shutdown-tool").chmod(0o4755)
    elif kind in ("paths", "extra and paths"):
        # The paths only say what to stat: one left out is missed by the listing, one
        # more in the tree (listed there or not) by the count.
        paths = (store / one / "paths").read_text().splitlines()
        if kind == "paths":
            paths.remove("./usr/lib/shutdown-tool")
        else:
            (tree / "usr/lib/ld.so.preload").write_bytes(b"")
            paths.append("./usr/lib/ld.so.preload")
        (store / one / "paths").write_text("".join(f"{line}\n" for line in paths))
    elif kind == "link":
        (tree / "shutdown").unlink()
        (tree / "shutdown").symlink_to("usr/lib")
    else:
        (store / "default").write_text(hashlib.sha256(b"gone").hexdigest())
        (run / "bookend/exitrd.sha256").unlink()


REFUSED = "refusing it; shutdown goes on without an exitrd"
TREE_DAMAGES = ["file", "extra", "mode", "link", "paths", "extra and paths"]


@pytest.mark.parametrize("kind", ["sums", *TREE_DAMAGES, "missing"])
def test_loader_refuses_what_the_digest_does_not_name(
    installed: tuple[Path, Path, str, str], kind: str
) -> None:
    root, run, _, _ = installed
    (run / "initramfs").mkdir()
    (run / "initramfs/shutdown").symlink_to("stale")
    damage(installed, kind)
    done = load(root, run)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(REFUSED)
    assert not os.path.lexists(run / "initramfs/shutdown")
    assert sorted(os.listdir(run)) == ["bookend", "initramfs"]


def test_checked_at_boot_the_shutdown_only_copies(installed: tuple[Path, Path, str, str]) -> None:
    root, run, one, _ = installed
    checked = load(root, run, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"exitrd {one} (from the initrd that booted" in checked.stdout
    # The record, read back the way the shutdown reads it: the digest, the listing,
    # and an entry's fingerprint for each of its paths.
    show = '. "$1"; echo "$checked_digest"; echo "$checked_entries"; echo "$checked_seen"'
    record = subprocess.run(["sh", "-c", show, "sh", run / "bookend/exitrd.checked"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    paths = seal_tree(root / STORE / one / "tree").paths.decode().splitlines()
    digest, *lines = record.splitlines()
    listing, seen = lines[: len(paths)], lines[len(paths) + 1 :]
    assert digest == one and listing == paths and lines[len(paths)] == ""
    assert len(seen) == len(paths) and all(p in s for p, s in zip(paths, seen, strict=True))
    # Checked only, and the copy's place made ready: empty, root's alone.
    target = run / "initramfs"
    assert os.listdir(target) == [] and (target.stat().st_mode & 0o777) == 0o700
    done = load(root, run)
    assert done.returncode == 0, done.stderr
    assert "copied to " in done.stdout and "(checked at boot, unchanged since)" in done.stdout
    assert seal_tree(target).digest == one and (target.stat().st_mode & 0o777) == 0o700
    assert sorted(os.listdir(run)) == ["bookend", "initramfs"]  # no staging left


def test_a_copy_that_fails_half_way_is_removed_whole(
    installed: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    """systemd-tmpfiles goes on after a line it could not copy, /shutdown's too: a copy
    that fails (here: every line but the first copied, then a failure) leaves nothing."""
    root, run, _, _ = installed
    assert load(root, run, "check").returncode == 0
    failing = tmp_path / "bin"
    failing.mkdir()
    real = shutil.which("systemd-tmpfiles")
    (failing / "systemd-tmpfiles").write_text(f"#!/bin/sh\nsed 1d | {real} --create - && exit 73\n")
    (failing / "systemd-tmpfiles").chmod(0o755)
    done = load(root, run, path=f"{failing}:")
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(REFUSED) and "cannot copy" in done.stderr
    assert not (run / "initramfs").exists()


@pytest.mark.parametrize("kind", [kind for kind in TREE_DAMAGES if kind != "paths"])
def test_a_change_after_the_check_is_checked_in_full_and_refused(
    installed: tuple[Path, Path, str, str], kind: str
) -> None:
    root, run, _, _ = installed
    assert load(root, run, "check").returncode == 0
    damage(installed, kind)
    done = load(root, run)
    assert done.returncode == 1
    assert "changed since the check at boot: checking it in full" in done.stderr
    assert done.stderr.rstrip().endswith(REFUSED)
    assert os.listdir(run / "initramfs") == []  # as the check left it: no /shutdown
    assert sorted(os.listdir(run)) == ["bookend", "initramfs"]  # no staging left


def test_checked_at_boot_a_filled_target_is_replaced_whole(
    installed: tuple[Path, Path, str, str],
) -> None:
    """Something put files in /run/initramfs after the check: the copy is made aside
    and replaces it, so nothing of the other files is left beside the exitrd."""
    root, run, one, _ = installed
    assert load(root, run, "check").returncode == 0
    (run / "initramfs/stray").write_text("not the exitrd's")
    done = load(root, run)
    assert done.returncode == 0, done.stderr
    assert "replacing what was there (checked at boot, unchanged since)" in done.stdout
    assert seal_tree(run / "initramfs").digest == one
    assert sorted(os.listdir(run)) == ["bookend", "initramfs"]


@pytest.mark.parametrize("kind", ["sums", "paths"])
def test_other_sums_or_listing_after_the_check_change_nothing(
    installed: tuple[Path, Path, str, str], kind: str
) -> None:
    """The shutdown copies the tree the check read, which the listing the check
    recorded names; the sums and the listing beside the tree it no longer needs."""
    root, run, one, _ = installed
    assert load(root, run, "check").returncode == 0
    damage(installed, kind)
    done = load(root, run)
    assert done.returncode == 0, done.stderr
    assert seal_tree(run / "initramfs").digest == one


def test_a_failed_check_at_boot_leaves_the_full_check_to_the_shutdown(
    installed: tuple[Path, Path, str, str],
) -> None:
    root, run, _, _ = installed
    damage(installed, "file")
    checked = load(root, run, "check")
    assert checked.returncode == 1
    assert checked.stderr.rstrip().endswith("not checked at boot; the shutdown checks it in full")
    assert sorted(os.listdir(run / "bookend")) == ["exitrd.sha256"]  # nothing recorded
    done = load(root, run)
    assert done.returncode == 1 and "since the check" not in done.stderr
    assert done.stderr.rstrip().endswith(REFUSED)


def test_initrd_gets_the_digest_and_only_it_changes(root_tree: Path, tmp_path: Path) -> None:
    exitrd = image(root_tree, tmp_path / "x")
    digest = seal_image(exitrd).digest
    tmpfiles = "/usr/bin/systemd-tmpfiles"
    paths = [path for path, _, _ in initrd_entries(digest, tmpfiles)]
    other = initrd_entries("0" * 64, tmpfiles)
    ours = initrd_entries(digest, tmpfiles)
    differs = [a[0] for a, b in zip(ours, other, strict=True) if a != b]
    assert differs == [DIGEST_CONF]
    config = load_config(None, {"sysroot": str(root_tree), "output": str(tmp_path / "i.img")})
    closure = Closure({e.path: ClosureEntry(e, "test", None) for e in BASE})
    unnamed = with_exitrd(Closure({}), closure, config)  # nothing in it to leave the digest
    assert unnamed.entries == {} and "no systemd-tmpfiles" in unnamed.warnings[0]
    program = ArchiveEntry(tmpfiles, EntryKind.FILE, 0o755, data=b"")
    initrd = with_exitrd(Closure({tmpfiles: ClosureEntry(program, "t", None)}), closure, config)
    assert set(paths) <= set(initrd.entries)
    conf = initrd.entries[DIGEST_CONF].entry.data or b""
    assert conf == f"f /run/bookend/exitrd.sha256 0444 - - - {digest}\n".encode()
    unit = initrd.entries["/usr/lib/systemd/system/bookend-exitrd-digest.service"].entry
    assert f"ExecStart={tmpfiles} --create {DIGEST_CONF}" in (unit.data or b"").decode()


def test_a_carried_exitrd_is_copied_to_run_initramfs_by_the_same_tmpfiles_run() -> None:
    from bookend.exitrd_store import CARRIED, DIGEST_CONF

    digest = "ab" * 32
    plain = dict((path, data) for path, data, _ in initrd_entries(digest, "/usr/bin/x"))
    carried = dict((path, data) for path, data, _ in initrd_entries(digest, "/usr/bin/x", True))
    assert f"C /run/initramfs - - - - {CARRIED}".encode() not in (plain[DIGEST_CONF] or b"")
    assert (carried[DIGEST_CONF] or b"").endswith(f"C /run/initramfs - - - - {CARRIED}\n".encode())


def test_the_exitrd_tree_goes_under_carried_without_its_device_nodes(
    root_tree: Path, tmp_path: Path
) -> None:
    from bookend.exitrd_store import CARRIED

    def item(entry: ArchiveEntry) -> ClosureEntry:
        return ClosureEntry(entry, "t", None)

    exitrd = Closure({
        "/shutdown": item(ArchiveEntry("/shutdown", EntryKind.SYMLINK, 0o777, target="usr/x")),
        "/usr/x": item(ArchiveEntry("/usr/x", EntryKind.FILE, 0o755, data=b"x")),
        "/dev/console": item(ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=1)),
    })  # fmt: skip
    values = {"sysroot": str(root_tree), "output": str(tmp_path / "i.img")}
    alone = with_exitrd(Closure({}), exitrd, load_config(None, values))
    assert alone.entries == {}  # not carried unless exitrd_in_initrd says so
    config = load_config(None, {**values, "exitrd_in_initrd": True})
    carried = with_exitrd(Closure({}), exitrd, config).entries
    assert set(carried) == {CARRIED, f"{CARRIED}/shutdown", f"{CARRIED}/usr/x"}
    assert carried[f"{CARRIED}/shutdown"].entry.target == "usr/x"  # as the exitrd has it
