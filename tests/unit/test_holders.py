"""The exitrd's holders hook (bookend.holders), run by the host's shell on fake /proc, /sys
and /dev trees with no program on PATH (the exitrd has only the shell): what it says when
everything is detached, and when something holds on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bookend.holders import HOLDERS_SCRIPT

ROOT_MOUNT = "36 1 254:1 / /oldroot rw,relatime - ext4 /dev/mapper/vg-root rw\n"
OTHER_MOUNT = "22 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n"


def run_hook(tmp_path: Path, proc: Path, sys: Path, wait: int = 1) -> tuple[str, float]:
    script = tmp_path / "bookend-holders"
    script.write_text(HOLDERS_SCRIPT)
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    empty = tmp_path / "no-programs"
    empty.mkdir()
    shell = shutil.which("sh")
    assert shell is not None
    # An empty PATH: a program the script ran instead of a builtin would not be found.
    env = {**os.environ, "PATH": str(empty), "BOOKEND_PROC": str(proc), "BOOKEND_SYS": str(sys),
           "BOOKEND_DEV": str(tmp_path / "dev"), "BOOKEND_KMSG": str(kmsg),
           "BOOKEND_HOLD_WAIT": str(wait)}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([shell, str(script), "poweroff"], env=env, check=True, timeout=60,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert "not found" not in done.stderr, done.stderr
    return kmsg.read_text(), time.monotonic() - started


def fake_proc(tmp_path: Path, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return proc


def add_process(
    proc: Path, pid: int, comm: str, argv: list[str], files: list[tuple[str, int, int]],
    mountinfo: str = OTHER_MOUNT + ROOT_MOUNT, maps: str = "",
) -> None:  # fmt: skip
    """files: each open file's link target, mount ID and inode, as fd/N and fdinfo/N."""
    directory = proc / str(pid)
    (directory / "fd").mkdir(parents=True)
    (directory / "fdinfo").mkdir()
    (directory / "comm").write_text(comm + "\n")
    (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    for number, (target, mount_id, inode) in enumerate(files):
        (directory / "fd" / str(number)).symlink_to(target)
        (directory / "fdinfo" / str(number)).write_text(
            f"pos:\t0\nflags:\t02\nmnt_id:\t{mount_id}\nino:\t{inode}\n"
        )
    (directory / "mountinfo").write_text(mountinfo)
    (directory / "maps").write_text(maps)


def fake_sys(tmp_path: Path) -> Path:
    sys = tmp_path / "sys"
    (sys / "block").mkdir(parents=True)
    return sys


def test_nothing_left_says_so_at_once(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, OTHER_MOUNT)
    add_process(proc, 300, "sleep", ["@daemon", "infinity"], [("/dev/null", 22, 4)])
    text, seconds = run_hook(tmp_path, proc, fake_sys(tmp_path), wait=5)
    assert text == "bookend: old root unmounted, every DM and MD device detached\n"
    assert seconds < 5


def test_a_held_root_names_its_holders_after_the_bound(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, OTHER_MOUNT + ROOT_MOUNT)
    nodes = tmp_path / "dev"
    nodes.mkdir()
    (nodes / "dm-0").write_text("")  # -ef compares the fd's file with it
    (nodes / "null").write_text("")
    # Held by an open file (mount 36 is the old root's), by a mapped program on its device
    # (maps gives it in hex: fe:01 is 254:1), and a DM device held open.
    add_process(proc, 300, "sleep", ["@daemon", "infinity"],
                [(str(nodes / "null"), 22, 4), ("/oldroot/var/held", 36, 4242)])  # fmt: skip
    add_process(proc, 301, "cat", ["cat"], [(str(nodes / "null"), 22, 4)])  # holds nothing
    maps = ("7f00-7f10 r-xp 00000000 00:05 9 /dev/zero (deleted)\n"
            "7f10-7f20 r-xp 00000000 fe:01 77 /oldroot/usr/sbin/storaged\n")  # fmt: skip
    add_process(proc, 303, "storaged", ["@storaged"], [], maps=maps)
    add_process(proc, 305, "dmsetup", ["dmsetup"], [(str(nodes / "dm-0"), 22, 12)])
    (proc / "302").mkdir()  # a kernel thread: no command line
    (proc / "302" / "cmdline").write_text("")
    sys = fake_sys(tmp_path)
    for dev, name, number in (("dm-0", "pv_crypt", "254:0"), ("dm-1", "vg-root", "254:1")):
        (sys / "block" / dev / "dm").mkdir(parents=True)
        (sys / "block" / dev / "holders").mkdir()
        (sys / "block" / dev / "dm" / "name").write_text(name + "\n")
        (sys / "block" / dev / "dev").write_text(number + "\n")
    (sys / "block" / "dm-0" / "holders" / "dm-1").mkdir()
    (sys / "block" / "md127" / "md").mkdir(parents=True)
    (sys / "block" / "md127" / "md" / "array_state").write_text("active\n")
    (sys / "block" / "md126" / "md").mkdir(parents=True)
    (sys / "block" / "md126" / "md" / "array_state").write_text("clear\n")  # stopped
    text, seconds = run_hook(tmp_path, proc, sys, wait=1)
    lines = text.splitlines()
    assert re.fullmatch(r"bookend: not detached after [12] s; what holds it \(power-off goes on\):",
                        lines[0])  # fmt: skip
    assert "bookend: still mounted: /oldroot (ext4 from /dev/mapper/vg-root)" in lines
    assert ("bookend:   /oldroot is held by pid 300 (sleep, a storage daemon: argv[0] starts "
            "with @): fd 1 (inode 4242)") in lines  # fmt: skip
    assert ("bookend:   /oldroot is held by pid 303 (storaged, a storage daemon: argv[0] "
            "starts with @): maps /oldroot/usr/sbin/storaged") in lines  # fmt: skip
    assert f"bookend:   dm-0 is open in pid 305 (dmsetup): fd 0 ({nodes}/dm-0)" in lines
    assert not any("pid 301" in line or "pid 302" in line for line in lines)
    assert not any("dm-1 is open" in line or "pid 300 (sleep, a storage daemon: argv[0] "
                   "starts with @): fd 0" in line for line in lines)  # fmt: skip
    assert "bookend: still present: DM device pv_crypt (dm-0)" in lines
    assert "bookend:   dm-0 is held by dm-1 (vg-root)" in lines
    assert "bookend:   dm-1 is mounted on /oldroot" in lines
    assert "bookend: still running: MD array md127 (active)" in lines
    assert "md126" not in text
    assert 1 <= seconds < 5
