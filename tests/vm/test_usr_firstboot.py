"""A separate /usr given by mount.usr=, and the first boot of an image that grows into its
disk, in one boot of harness/usrdisk.py's disk: /usr on partition 1, a 510 MiB root on
partition 2, and 3 GiB free after it. The initrd mounts /usr before switch-root (the root
has no init without it), checks the root and /usr with fsck and shows the result on the
console, and systemd-repart grows the root partition by the /usr partition's repart.d;
the real root's systemd-growfs then grows the filesystem (its fstab says
x-systemd.growfs)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk
from harness.token import boot_to_token
from harness.usrdisk import (
    CHECK_LINE,
    MARKER_TEXT,
    ROOT_MIB,
    ensure_usr_disk,
)
from tests.vm.conftest import BOOT_LIMIT

GIB = 1024**3


def test_separate_usr_and_first_boot_growth(
    kernel: Kernel, root_disk: RootDisk, console_log: Path, tmp_path: Path
) -> None:
    disk = ensure_usr_disk(root_disk)
    initrd = build_image(tmp_path / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                         "--add-feature", "usr", "--add-feature", "repart")  # fmt: skip
    options = BootOptions(
        kernel=kernel.path,
        initrd=initrd,
        disks=(Disk(disk.image),),
        append=f"{disk.cmdline} rw",
        timeout=BOOT_LIMIT,
        log_path=console_log,
    )
    checked: dict[str, str] = {}

    def first_boot(vm: Boot) -> None:
        # In the initrd, before the root's systemd greets: /usr at /sysusr/usr, bound
        # to /sysroot/usr.
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        vm.expect(r"Mounted .*/sysroot/usr\b", timeout=240)
        vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=240)
        line = vm.expect(rf"{CHECK_LINE} (.*) end", timeout=BOOT_LIMIT)
        for field in line.group(1).split():
            key, _, value = field.partition("=")
            checked[key] = value

    booted = boot_to_token(options, on_the_way=first_boot)
    # The real root's greeting parts the console: the initrd's says "bookend initrd".
    welcomes = re.finditer(r"Welcome to [^\n]*!", booted.text)
    switch = next(m.start() for m in welcomes if "bookend initrd" not in m.group(0))
    initrd_part, root_part = booted.text[:switch], booted.text[switch:]
    # fsck's verdict for the root and for /usr (e2fsck names them by label), on the
    # console, from the initrd.
    for label in ("root", "usr"):
        assert re.search(rf"systemd-fsck\[\d+\]: {label}: clean, \d+/\d+ files", initrd_part)
    assert re.search(r"Mounted .*/sysusr/usr\b", initrd_part)
    assert re.search(r"Finished .*systemd-repart\.service", initrd_part)
    # The real root mounted no /usr of its own: it found it mounted.
    assert not re.search(r"Mount(ing|ed) .*usr\.mount|Mount(ing|ed) /usr\b", root_part)
    assert checked["root-usr-mounts"] == "0", checked
    assert int(checked["initrd-usr-mounts"]) >= 1, checked
    assert checked["usr-source"] == "/dev/vda1", checked
    assert "noatime" in checked["usr-options"].split(","), checked  # mount.usrflags=
    assert checked["marker"] == MARKER_TEXT.replace(" ", "_"), checked
    assert checked["root"] == "/dev/vda2", checked
    # 510 MiB written; the disk has 3.5 GiB for the root once grown.
    assert ROOT_MIB * 1024**2 < 3 * GIB
    assert int(checked["part-bytes"]) > 3 * GIB, checked
    assert int(checked["fs-bytes"]) > 3 * GIB, checked
    assert not booted.failed_units, f"units failed; see {console_log}"
