"""`bookend boot-test`, run as a user runs it: it passes on the plain root disk (with an
image it builds itself) and on an LVM-on-LUKS2 disk (typing the passphrase), and fails,
saying why, with an image that lacks the root's filesystem module and with a root that
never reaches its default target. Its SVG timeline is rendered by headless Chromium and
the screenshot kept with the test's output (the path is printed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bookend.boottest.timeline import PHASE_COLOURS
from harness.images import QEMU_VIRTIO_EXT4, bookend, build_image
from harness.qemu import Kernel, default_cpus
from harness.rootdisk import RootDisk
from harness.stackdisks import StackDisks
from tests.pngfile import read_png

CHROMIUM = shutil.which("chromium")
# A failing boot is given less: the failure shows within a minute or two.
FAIL_LIMIT = "360"


def boot_test(*args: str) -> tuple[int, dict[str, Any]]:
    # The suite's virtual CPUs per guest: one under xdist, where a second CPU per guest
    # only takes the cores from the other worker's guest (a 2-CPU guest beside another
    # guest on 2 cores once stalled in early boot until the timeout).
    cpus = str(default_cpus())
    result = bookend("boot-test", "--json", "--accel", "tcg", "--cpus", cpus, *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def root_words(root_disk: RootDisk) -> str:
    return f"root=UUID={root_disk.uuid} rw"


@pytest.fixture(scope="module")
def carrying_image(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image for the virtio ext4 root that carries its exitrd."""
    output = tmp_path_factory.mktemp("carrying") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4, "--exitrd-in-initrd")


def test_passes_on_the_plain_root_with_an_image_it_builds(
    kernel: Kernel, root_disk: RootDisk, tmp_path: Path
) -> None:
    timeline = tmp_path / "boot.svg"
    console = tmp_path / "console.log"
    status, report = boot_test(
        "--kver", kernel.version, "--filesystem", "ext4", "--kernel", str(kernel.path),
        "--disk", str(root_disk.image), "--append", root_words(root_disk),
        "--timeline", str(timeline), "--console-log", str(console),
    )  # fmt: skip
    assert status == 0 and report["passed"], (report["reasons"], console)
    phases = report["phases"]
    assert 0 < phases["init"] < phases["switch_root"] < phases["root_reached"]
    assert phases["poweroff"] < phases["exitrd"] <= phases["power_down"]
    assert report["through_exitrd"]
    # The exitrd's systemd-shutdown unmounted the old root; a plain root's exitrd has no
    # storage to detach, so no holders hook to report on it.
    assert any("All filesystems unmounted" in line for line in report["exitrd_lines"])
    assert not any("every DM and MD device detached" in line for line in report["exitrd_lines"])
    assert "sysroot.mount" in {unit["name"] for unit in report["initrd_units"]}
    # The root's token came from this boot: the marks it printed are on the console.
    assert "BOOKEND-BOOT-TEST" in console.read_text()
    render_timeline(timeline, tmp_path)


def render_timeline(timeline: Path, tmp_path: Path) -> None:
    """The SVG in headless Chromium: every phase's colour is on the screenshot."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    shot = tmp_path / "timeline.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1800,700",
         f"--screenshot={shot}", timeline.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    print(f"timeline screenshot: {shot}")
    _width, _height, rows = read_png(shot.read_bytes())
    pixels = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    for name, colour in PHASE_COLOURS.items():
        assert bytes.fromhex(colour.lstrip("#")) in pixels, f"no {name} bar on {shot}"


def test_passes_on_lvm_on_luks(
    kernel: Kernel, stacks: dict[str, StackDisks], tmp_path: Path
) -> None:
    stack = stacks["lvm-on-luks"]
    assert stack.passphrase and stack.luks_uuid and stack.luks_name
    image = build_image(tmp_path / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                        "--add-feature", "luks", "--add-feature", "lvm",
                        "--exitrd-in-initrd")  # fmt: skip
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(stack.passphrase + "\n")
    disks = [arg for disk in stack.disks for arg in ("--disk", str(disk))]
    unlock = f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} rw"
    status, report = boot_test(
        str(image), "--kernel", str(kernel.path), *disks, "--append", unlock,
        "--passphrase-file", str(passphrase), "--console-log", str(tmp_path / "console.log"),
    )  # fmt: skip
    assert status == 0 and report["passed"], (report["reasons"], tmp_path / "console.log")
    assert report["through_exitrd"]
    assert "shutdown[1]: All DM devices detached." in report["exitrd_lines"]


def test_fails_without_the_root_filesystem_module(
    kernel: Kernel, root_disk: RootDisk, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "initrd.img", kernel.version, "--add-module", "virtio_blk",
                        "--add-module", "virtio_pci", "--omit-module", "ext4",
                        "--exitrd-in-initrd")  # fmt: skip
    status, report = boot_test(
        str(image), "--kernel", str(kernel.path), "--disk", str(root_disk.image),
        "--append", root_words(root_disk), "--timeout", FAIL_LIMIT,
        "--console-log", str(tmp_path / "console.log"),
    )  # fmt: skip
    assert status == 1 and not report["passed"]
    (reason,) = report["reasons"]
    assert reason.startswith("the initrd "), reason
    assert "ext4" in reason or "sysroot" in reason, reason


def test_fails_when_the_root_never_reaches_its_default_target(
    kernel: Kernel, root_disk: RootDisk, carrying_image: Path, tmp_path: Path
) -> None:
    status, report = boot_test(
        str(carrying_image), "--kernel", str(kernel.path), "--disk", str(root_disk.image),
        "--append", f"{root_words(root_disk)} systemd.unit=emergency.target",
        "--timeout", FAIL_LIMIT, "--console-log", str(tmp_path / "console.log"),
    )  # fmt: skip
    assert status == 1 and not report["passed"]
    (reason,) = report["reasons"]
    assert reason.startswith("the root entered emergency mode"), reason
    assert report["phases"]["switch_root"] is None  # no journal: the root's command never ran
