"""arm64, built on this x86-64 host: an image from a debootstrapped arm64 Debian 12 tree
(first stage only, nothing of it run) boots Debian's arm64 kernel on QEMU's emulated
"virt" board into the arm64 root disk, which reports the token; at power-off its exitrd
takes the root down, and the machine powers off through PSCI.

One boot proves it all: the root has no Python; the job disk carries the exitrd as
`bookend install-exitrd --root` installed it on this host, and copies it over the root
before the root reports; the root's shell loader copies and checks it at shutdown. Run
with `-rP` for the figures.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.arm64root import ensure_arm64_root
from harness.exitrdjob import (
    BOOT_LIMIT,
    PIVOT,
    SHUTDOWN_LIMIT,
    installed_exitrd_job,
    split_at_pivot,
)
from harness.guestjob import read_job_output
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import ARM64, BootOptions, boot
from harness.token import new_token

# The root has no Python at all: nothing of bookend runs in it.
NO_PYTHON = """
if ls /usr/bin/python3* 2>/dev/null; then exit 1; fi
"""
# Console lines whose arrival the test times, in the order they come.
MARKS = (
    ("kernel start", r"Booting Linux on physical CPU"),
    ("switch-root", r"Starting .*Switch Root\.\.\."),
    ("job done", r"BOOKEND-JOB-STATUS (\d+)"),
)


def test_arm64_image_switches_root_and_exitrd_powers_off(tmp_path: Path, console_log: Path) -> None:
    root = ensure_arm64_root()
    # The tree is as debootstrap's first stage left it plus unpacked packages: no
    # modules.dep, so the build indexes the arm64 modules with this host's depmod.
    assert not (root.tree / f"lib/modules/{root.kernel.version}/modules.dep").exists()
    (tmp_path / "images").mkdir()
    initrd = build_image(tmp_path / "images/initrd.img", root.kernel.version,
                         "--sysroot", str(root.tree), *QEMU_VIRTIO_EXT4)  # fmt: skip
    job = installed_exitrd_job(tmp_path / "job.img", initrd.parent, then=NO_PYTHON)
    token = new_token()
    options = BootOptions(
        kernel=root.kernel.path,
        initrd=initrd,
        disks=(root.disk.image, job),
        append=f"root=UUID={root.disk.uuid} rw bookend.job bookend.token={token}",
        arch=ARM64,
        cpus=1,
        timeout=BOOT_LIMIT,
        log_path=console_log,
    )
    at: dict[str, float] = {}
    with boot(options) as vm:
        for name, pattern in MARKS:
            match = vm.expect(pattern, timeout=BOOT_LIMIT)
            at[name] = vm.elapsed
        assert match.group(1) == "0", f"the install job failed; see {console_log}"
        report = vm.expect(rf"BOOKEND-TOKEN {token} booted-with-initrd=(\w+) "
                           rf"systemd-initrd=(\w+)(?=\s)", timeout=BOOT_LIMIT)  # fmt: skip
        at["token"] = vm.elapsed
        assert report.groups() == ("yes", "yes"), report.group(0)
        vm.expect(PIVOT, timeout=SHUTDOWN_LIMIT)
        at["pivot"] = vm.elapsed
        assert vm.wait_exit(SHUTDOWN_LIMIT) == 0
        at["off"] = vm.elapsed
        text = vm.text
    running, pivoted = split_at_pivot(text)
    # The root is arm64 Debian's, entered through bookend's initrd.
    assert "Detected architecture arm64." in running
    # The running root's loader (a shell script: load-exitrd) copied and checked it.
    assert re.search(r"bookend: exitrd \w{64} .*: \d+ entries copied", running), running[-2000:]
    # From the pivot on the exitrd's /shutdown (systemd-shutdown) speaks, then PSCI.
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted), pivoted[-2000:]
    # The root's filesystem is unmounted from the exitrd: vda is the root disk.
    assert "EXT4-fs (vda): unmounting filesystem." in pivoted, pivoted[-2000:]
    assert "reboot: Power down" in pivoted, pivoted[-2000:]
    assert read_job_output(job.path, "ram-kib", tmp_path / "ram").read_text().strip() == "0"
    start = at["kernel start"]
    print(f"arm64 boot, seconds from the kernel's start: switch-root "
          f"{at['switch-root'] - start:.0f}, token {at['token'] - start:.0f}; "
          f"power-off took {at['off'] - at['token']:.0f} "
          f"(pivot into the exitrd {at['pivot'] - at['token']:.0f} after the token); "
          f"QEMU ran {at['off']:.0f}")  # fmt: skip
