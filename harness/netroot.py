"""What every network-root test shares: copies of the cached disks a server may write,
the console's way from the initrd into the root, the server's copy checked clean once
the guest is off, and each scenario's figures for the run's report.

A scenario's figures are what issue 14 asks to report: the guest's time to switch root
(the kernel's timestamp on the real root's first systemd line) and the image sizes.
Tests record them with `record_scenario`; the run's summary (tests/conftest.py) prints
them as a table. Without BOOKEND_TEST_SCENARIOS nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bookend.kmodules import DATABASE_FILES

if TYPE_CHECKING:  # the run's summary imports this module; it needs no QEMU
    from harness.qemu import Boot

SCENARIOS_ENV = "BOOKEND_TEST_SCENARIOS"

# "[    8.947728] systemd[1]: systemd 252.39-1~deb12u2 running in system mode (...)"
SYSTEMD_START = re.compile(r"\[\s*(\d+\.\d+)\] systemd\[1\]: systemd \S+ running in system mode")


def overlay_of(image: Path, path: Path) -> Path:
    """A qcow2 overlay over a raw image: writes go to the overlay, the image stays as is."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", str(image), str(path)], check=True)  # fmt: skip
    return path


# systemd 252 greets an initrd with "Welcome to", 257 with "Booting initrd of"; the
# real root's greeting is any other. Not "no parenthesis": Debian's own greeting has
# one ("Welcome to Debian GNU/Linux 12 (bookworm)!").
INITRD_GREETING = r"(Welcome to|Booting initrd of) [^\n]*\(bookend initrd\)"
ROOT_GREETING = r"Welcome to (?![^\n]*\(bookend initrd\))[^\n]*!"


def expect_initrd_then_root(vm: Boot) -> None:
    """Wait for the initrd's greeting, its target, then the real root's greeting."""
    vm.expect(INITRD_GREETING, timeout=300)
    vm.expect(r"Reached target .*initrd\.target", timeout=400)
    vm.expect(ROOT_GREETING, timeout=200)


# bookend's own hostonly detection run on the live network root, by the job (after the
# exitrd job, in bookend's source directory): `plan --detect` needs none of the features'
# programs (the root has no nbd-client or iscsid), only the kernel's module index, which
# the job disk brings (module_index_tree) since the root has no /lib/modules.
DETECTION_FILES = "kindex"  # where the job disk holds module_index_tree's tree
DETECTION_CHECK = f"""
python3 -m bookend plan --detect --sysroot /job/{DETECTION_FILES} --kver "$(uname -r)" \\
    > /job/out/detection 2>&1 || echo "bookend plan --detect failed: $?" >> /job/out/detection
"""


def module_index_tree(kver: str, tree: Path, source: Path = Path("/")) -> Path:
    """A sysroot holding only the kernel's module index files (what detection looks
    names up in): a few MB on the job disk instead of the whole /lib/modules/KVER.
    source: the tree the kernel's modules are in (the guest's sysroot)."""
    moddir = tree / "usr/lib/modules" / kver
    moddir.mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "lib").symlink_to("usr/lib")
    for name in DATABASE_FILES:
        index = source / "lib/modules" / kver / name
        if index.exists():
            shutil.copy2(index, moddir / name)
    return tree


def assert_clean_ext4(raw: Path) -> None:
    """The ext4 filesystem in raw (read on the host, the guest off) is whole and was
    unmounted cleanly: fsck finds nothing, and no journal waits for replay."""
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    header = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True)
    assert re.search(r"Filesystem state:\s+clean", header.stdout), header.stdout
    assert "needs_recovery" not in header.stdout


def switch_root_seconds(console: str) -> float:
    """Seconds from the kernel's start to the real root's systemd, from the console.

    The first systemd line is the initrd's, the second the real root's (the exitrd runs
    no systemd manager of its own).
    """
    starts = SYSTEMD_START.findall(console)
    assert len(starts) >= 2, "the console shows no systemd started after switching root"
    return float(starts[1])


@dataclass(frozen=True)
class Scenario:
    name: str  # e.g. "nbd root, ip=dhcp"
    switch_root_s: float
    initrd_bytes: int
    exitrd_bytes: int  # 0 when the scenario has no exitrd


def record_scenario(name: str, console: str, initrd: Path) -> Scenario:
    """Record a booted scenario's figures for the run's report, and return them."""
    exitrd = initrd.with_name("exitrd.img")
    scenario = Scenario(
        name=name,
        switch_root_s=switch_root_seconds(console),
        initrd_bytes=initrd.stat().st_size,
        exitrd_bytes=exitrd.stat().st_size if exitrd.exists() else 0,
    )
    path = os.environ.get(SCENARIOS_ENV)
    if path:
        # One short write in append mode: lines from several processes do not interleave.
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(dataclasses.asdict(scenario)) + "\n")
    return scenario


def read_scenarios(path: Path) -> list[Scenario]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Scenario(**json.loads(line)) for line in lines]


def scenario_lines(scenarios: list[Scenario]) -> list[str]:
    """The report's table, one scenario a line, in name order."""
    if not scenarios:
        return []
    width = max(len(s.name) for s in scenarios)
    lines = [f"{'scenario':<{width}}  switch root  initrd    exitrd"]
    for s in sorted(scenarios, key=lambda s: s.name):
        exitrd = f"{s.exitrd_bytes / 2**20:6.1f} MiB" if s.exitrd_bytes else "       -"
        lines.append(f"{s.name:<{width}}  {s.switch_root_s:9.1f} s  "
                     f"{s.initrd_bytes / 2**20:5.1f} MiB {exitrd}")  # fmt: skip
    return lines


def pivoted_part(console: str) -> tuple[str, str]:
    """The console before the pivot into the exitrd, and from there on."""
    before, marker, pivoted = console.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    return before, pivoted


def unmount_position(pivoted: str) -> int:
    """Where systemd-shutdown, in the exitrd, says it unmounted (or unmounts) the old root."""
    unmounted = re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted)
    assert unmounted, pivoted[-3000:]
    return unmounted.start()


def assert_nbd_disconnected_after_unmount(console: str) -> None:
    """Nothing ended the NBD connection while the root ran ("shutting down sockets" is the
    kernel's word when one ends); the exitrd disconnected it once the old root was gone."""
    before, pivoted = pivoted_part(console)
    assert "block nbd0: shutting down sockets" not in before
    disconnected = re.search(
        r"bookend: disconnecting NBD device /dev/nbd0 \(/oldroot unmounted\)", pivoted
    )
    assert disconnected and disconnected.start() > unmount_position(pivoted), pivoted[-3000:]


def ext4_file_text(raw: Path, path: str) -> str:
    """A file's text from the ext4 filesystem in raw, read on the host (debugfs)."""
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True,
                            text=True, check=True)  # fmt: skip
    return result.stdout
