"""The exitrd the booted initrd vouched for, and only it, is loaded at shutdown, by a
unit that needs no Python (bookend.exitrd_store, bookend/data/load-exitrd.sh): checked
in full at boot, only copied at shutdown when nothing in it changed since.

Two boots of the root disk (a snapshot) through host_initrd, whose exitrd's digest the
initrd leaves in /run/bookend/exitrd.sha256:
- a kernel update while the system runs (another pair, built for another kernel
  version with a different exitrd, installed) and python3 removed: the shutdown loads
  the booted initrd's exitrd, untouched since the check at boot, so only copied,
  without Python, and pivots into it;
- the booted initrd's exitrd replaced on disk by another, its sums with it, after the
  check at boot: checked again in full at shutdown and refused, and the machine powers
  off the normal way.
Run with `-rP` to see the measured load time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

import bookend
from harness.exitrdjob import START_EXITRD_UNIT, shutdown_through, split_at_pivot
from harness.guestjob import make_job_disk, read_job_output
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import BootOptions, Kernel
from harness.token import in_order

STORE = "/usr/lib/bookend/exitrd"
# Installs the exitrd built with the booted initrd, named by that initrd (copied to
# /boot: an installed initrd is what keeps its exitrd), and starts the unit.
INSTALL = (
    f"""\
#!/bin/bash
set -eux
mkdir -p /usr/local/lib/bookend-src
cp -r /job/src/bookend /usr/local/lib/bookend-src/
cd /usr/local/lib/bookend-src
cp /job/booted/initrd.img /boot/initrd.img-booted
python3 -m bookend install-exitrd --image /job/booted/exitrd.img --initrd /boot/initrd.img-booted
cp /run/bookend/exitrd.sha256 /job/out/booted-digest
cp {STORE}/default /job/out/installed-digest
"""
    + START_EXITRD_UNIT
)
# A kernel update: the new pair is written while the system runs and installed.
UPDATE = f"""\
cp /job/other/initrd.img /boot/initrd.img-other
python3 -m bookend install-exitrd --image /job/other/exitrd.img --initrd /boot/initrd.img-other
cp {STORE}/default /job/out/default-digest
ls {STORE} > /job/out/store
"""
# Where the loader's time goes, each step timed once while running (warm page cache;
# bash's clock, so that timing costs no program run).
STEPS = f"""\
step() {{ t=$EPOCHREALTIME; "$@" > /dev/null; e=$EPOCHREALTIME
         echo "$(((${{e/./}} - ${{t/./}}) * 1000))" >> /job/out/steps; }}
d=$(cat /run/bookend/exitrd.sha256)
step /bin/true
step sh -c :
cd {STORE}/$d/tree
step stat -c '%d %i %s %f %.9Y %.9Z %N' -- $(cat ../paths)
cd /
echo "C /run/measure - - - - {STORE}/$d/tree" > /run/measure.conf
step systemd-tmpfiles --create /run/measure.conf
cd /run/measure
step sha256sum -c --quiet --strict {STORE}/$d/sums < /dev/null || true
cd /
rm -rf /run/measure /run/measure.conf
"""
# A root without Python from here on.
NO_PYTHON = """\
rm -f /usr/bin/python3 /usr/bin/python3.*
hash -r
if command -v python3; then exit 1; fi
"""
# Someone who can write /usr puts the other exitrd, and its sums, where the booted
# initrd's exitrd was: every file consistent with every other, but not the one vouched for.
# Before that, the loader timed once, into a scratch target (warm page cache).
MEASURE = """\
t=$EPOCHREALTIME
BOOKEND_EXITRD_TARGET=/run/measure-shell /usr/lib/bookend/load-exitrd
e=$EPOCHREALTIME
echo $(((${e/./} - ${t/./}) / 1000)) > /job/out/shell-ms
rm -rf /run/measure-shell
"""
REPLACE = f"""\
cp /job/other/initrd.img /boot/initrd.img-other
python3 -m bookend install-exitrd --image /job/other/exitrd.img --initrd /boot/initrd.img-other
booted=$(cat /run/bookend/exitrd.sha256)
other=$(cat {STORE}/default)
rm -rf {STORE}/$booted
cp -a {STORE}/$other {STORE}/$booted
"""
LOADED = re.compile(
    r"bookend: exitrd (\w{64}) \(from the initrd that booted .*?\): (\d+) entries copied "
    r"to /run/initramfs (?:\(checked at boot, unchanged since\)|and checked) in (\d+) ms"
)
CHECKED = re.compile(
    r"bookend: exitrd (\w{64}) \(from the initrd that booted .*?\): (\d+) entries checked "
    r"in (\d+) ms"
)


@pytest.fixture(scope="module")
def other_pair(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another initrd and exitrd: for another kernel version (a name only: the exitrd
    holds no modules), with a file more in the exitrd, so its digest differs."""
    output = tmp_path_factory.mktemp("other") / "initrd.img"
    build_image(output, kernel.version, *QEMU_VIRTIO_EXT4, "--exitrd-add-file", "/etc/hostname")
    return output.parent


def test_kernel_update_and_no_python_keep_the_booted_exitrd(
    root_boot: BootOptions, host_initrd: Path, other_pair: Path, tmp_path: Path
) -> None:
    job = make_job_disk(tmp_path / "job.img", INSTALL + UPDATE + STEPS + NO_PYTHON,
                        files={"src/bookend": Path(bookend.__file__).parent,
                               "booted": host_initrd.parent, "other": other_pair})  # fmt: skip
    text = shutdown_through(replace(root_boot, disks=(*root_boot.disks, job)))
    out = tmp_path / "out"
    out.mkdir()
    booted = read_job_output(job.path, "booted-digest", out / "b").read_text().strip()
    installed = read_job_output(job.path, "installed-digest", out / "i").read_text().strip()
    default = read_job_output(job.path, "default-digest", out / "d").read_text().strip()
    store = read_job_output(job.path, "store", out / "s").read_text().split()
    # The build's digest reached the running system, and the update installed another
    # exitrd beside it (both named by an installed initrd, so both kept).
    assert booted == installed != default
    assert booted in store and default in store
    running, exiting = split_at_pivot(text)
    checked = CHECKED.search(running)
    assert checked and checked.group(1) == booted, running[-3000:]
    loaded = LOADED.search(running)
    assert loaded, running[-3000:]
    assert loaded.group(1) == booted  # not the newest install's
    # Nothing in it changed since the check at boot: the shutdown only copied it.
    assert "(checked at boot, unchanged since)" in loaded.group(0)
    # First in the shutdown: done before multi-user.target's services begin to stop.
    in_order(running, (LOADED.pattern, r"Stopped target multi-user\.target",
                       r"Stopping getty@tty1\.service"))  # fmt: skip
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", exiting), exiting[-2000:]
    steps = read_job_output(job.path, "steps", out / "t").read_text().split()
    names = ("exec of /bin/true", "sh -c :", "stat of the entries",
             "systemd-tmpfiles' copy of the tree", "sha256sum -c")  # fmt: skip
    print(
        f"exitrd checked at boot in {int(checked.group(3)) / 1000:.2f} s, copied at shutdown "
        f"in {int(loaded.group(3)) / 1000:.2f} s ({loaded.group(2)} entries), without Python; "
        "while running: "
        + ", ".join(f"{n} {int(ns) / 1e6:.0f} ms" for n, ns in zip(names, steps, strict=True))
    )


def test_exitrd_replaced_with_its_sums_is_refused(
    root_boot: BootOptions, host_initrd: Path, other_pair: Path, tmp_path: Path
) -> None:
    job = make_job_disk(tmp_path / "job.img", INSTALL + MEASURE + REPLACE,
                        files={"src/bookend": Path(bookend.__file__).parent,
                               "booted": host_initrd.parent, "other": other_pair})  # fmt: skip
    text = shutdown_through(replace(root_boot, disks=(*root_boot.disks, job)))
    assert CHECKED.search(text), text[-3000:]  # at boot, before the replacement
    assert "changed since the check at boot: checking it in full" in text, text[-3000:]
    assert re.search(
        r"bookend: exitrd: \S+ differs from the digest \w{64} from the initrd "
        r"that booted .*: refusing it; shutdown goes on without an exitrd",
        text,
    ), text[-3000:]
    assert not LOADED.search(text)
    # Nothing to pivot into: the normal power-off (which the token's QEMU exit proved).
    assert "Returning to initrd" not in text and "Entering exitrd" not in text
    shell = read_job_output(job.path, "shell-ms", tmp_path / "shell").read_text().strip()
    print(f"loading the exitrd while running (checked at boot, so only copied): {shell} ms")
