"""The activation command and the hooks run where they should, as the guest itself sees.

Their commands write markers to /dev/kmsg, which the kernel prints on the console
between systemd's own status lines, and each marker says what the command found
(which root it ran in, whether /sysroot was mounted yet), so a test checks the place
of a command from inside the guest as well as by the order of the console's lines.
The activation and the hooks at every point share one boot; a failing activation has
its own. Run with `-rP` to see each boot's time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from harness.guestjob import job_status, make_job_disk, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import Boot, BootOptions, Kernel, boot
from harness.rootdisk import RootDisk

# How long a failed activation is watched for a switch-root that must not come.
NO_SWITCH_WATCH = 30

# The activation runs in the real root (which has no /etc/initrd-release), prints a
# marker on the kernel log and leaves one line in /run, which outlives switch-root.
ACTIVATION = (
    "where=real; [ -e /etc/initrd-release ] && where=initrd; "
    'echo "BOOKEND-ACTIVATION ran in=$where" > /dev/kmsg; '
    "echo ran >> /run/bookend-activation"
)
# The initrd's side of /run, read with the shell alone: the image has no cat.
PRE_PIVOT_READS_RUN = (
    'read -r seen < /run/bookend-activation; echo "BOOKEND-PRE-PIVOT saw=$seen" > /dev/kmsg'
)
# The real root's side: the job runs there, after switch-root.
JOB_READS_RUN = "#!/bin/sh\ncat /run/bookend-activation > /job/out/activation\n"

FAILING_ACTIVATION = "echo BOOKEND-ACTIVATION-FAILING; /bin/false"


# Shell functions for the checks, with builtins only: the image holds no more than
# systemd's tools and a shell.
HELPERS = {
    # running NAME: whether a process of that name exists (udevd workers share its name).
    "running": "running() { for f in /proc/[0-9]*/comm; do read -r c 2>/dev/null < $f "
    '&& [ "$c" = "$1" ] && echo yes && return; done; echo no; }',
    # mounted PATH: whether PATH is a mount point in this namespace.
    "mounted": 'mounted() { while read -r _ p _; do [ "$p" = "$1" ] && echo yes && return; '
    "done < /proc/self/mounts; echo no; }",
}


def kmsg_marker(name: str, *checks: str) -> str:
    """A hook command printing 'BOOKEND-HOOK name key=value...' for each check's result.

    A check is "key=$(command)"; the helpers it calls come along.
    """
    keys = [check.split("=", 1)[0] for check in checks]
    helpers = [text for helper, text in HELPERS.items() if any(helper in c for c in checks)]
    report = " ".join(f"{key}=${key}" for key in keys)
    return "; ".join([*helpers, *checks, f'echo "BOOKEND-HOOK {name} {report}" > /dev/kmsg'])


UDEVD = "udevd=$(running systemd-udevd)"
SYSROOT = "sysroot=$(mounted /sysroot)"


def hooks(root_uuid: str) -> list[str]:
    """One hook at every point (two at pre-mount), each reporting where it stands."""
    device = f"device=$([ -b /dev/disk/by-uuid/{root_uuid} ] && echo yes || echo no)"
    return [
        # Given out of order: the points order them, then the order given.
        f"pre-pivot={kmsg_marker('pre-pivot', SYSROOT)}",
        f"pre-mount={kmsg_marker('pre-mount-1', device, SYSROOT)}",
        f"cmdline={kmsg_marker('cmdline', UDEVD)}",
        f"pre-udev={kmsg_marker('pre-udev', UDEVD)}",
        f"pre-trigger={kmsg_marker('pre-trigger', UDEVD)}",
        f"mount={kmsg_marker('mount', SYSROOT)}",
        f"pre-mount={kmsg_marker('pre-mount-2', SYSROOT)}",
    ]


# What each hook must have found, in the order they must run.
EXPECTED_HOOKS = [
    "cmdline udevd=no",
    "pre-udev udevd=no",
    "pre-trigger udevd=yes",
    "pre-mount-1 device=yes sysroot=no",
    "pre-mount-2 sysroot=no",
    "mount sysroot=yes",
    "pre-pivot sysroot=yes",
]


def build_with(kernel: Kernel, tmp_path: Path, *args: str) -> Path:
    return build_image(tmp_path / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                       "--no-exitrd", *args)  # fmt: skip


def hook_args(root_uuid: str) -> list[str]:
    return [arg for hook in hooks(root_uuid) for arg in ("--hook", hook)]


def expect_switch(vm: Boot) -> None:
    vm.expect(r"Starting .*initrd-switch-root\.service", timeout=300)
    vm.expect(r"Welcome to Debian GNU/Linux [^\n]*!", timeout=120)


def position(text: str, pattern: str) -> int:
    """Where pattern first appears in the console text; fails the test if it does not."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not on the console"
    return match.start()


def test_failing_activation_stops_in_emergency_mode(
    kernel: Kernel, root_boot: BootOptions, console_log: Path, tmp_path: Path
) -> None:
    initrd = build_with(kernel, tmp_path, "--activation", FAILING_ACTIVATION)
    # A token on the command line, which the real root would report if it were reached.
    append = f"{root_boot.append} bookend.token=not-reached"
    with boot(replace(root_boot, initrd=initrd, append=append)) as vm:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        # The command's own output reaches the console (and the journal).
        vm.expect(r"BOOKEND-ACTIVATION-FAILING", timeout=300)
        vm.expect(r"Failed to start .*Activation of the Real Root", timeout=120)
        vm.expect(r"Reached target .*[Ee]mergency", timeout=120)
        vm.expect(r"root account is locked", timeout=120)
        seconds = vm.elapsed
        # switch-root was queued before the activation ran; it must not happen now.
        with pytest.raises(AssertionError):
            vm.expect(r"Welcome to Debian|BOOKEND-TOKEN", timeout=NO_SWITCH_WATCH)
        vm.kill()
    text = console_log.read_text(errors="replace")
    # systemd shortens status lines to the console's width, so match their ends.
    assert re.search(r"Dependency failed for .*Shutting Down Daemons", text)
    assert "initrd-switch-root.service" not in text
    print(f"failing activation reached emergency mode after {seconds:.0f} s")


def test_activation_runs_once_in_the_real_root_and_hooks_at_their_points_in_order(
    kernel: Kernel, root_disk: RootDisk, root_boot: BootOptions, tmp_path: Path
) -> None:
    # The activation's own pre-pivot hook comes after the reporting one (given first).
    initrd = build_with(kernel, tmp_path, *hook_args(root_disk.uuid), "--activation", ACTIVATION,
                        "--hook", f"pre-pivot={PRE_PIVOT_READS_RUN}")  # fmt: skip
    job = make_job_disk(tmp_path / "job.img", JOB_READS_RUN)

    def hooks_in_order(vm: Boot) -> None:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        # Each hook's report, in order: what it found says where it ran.
        for report in EXPECTED_HOOKS:
            vm.expect(rf"BOOKEND-HOOK {report}\n", timeout=300)
        expect_switch(vm)

    options = replace(root_boot, initrd=initrd, disks=(*root_boot.disks, job))
    done = run_job(options, on_the_way=hooks_in_order)
    text = done.text
    for report in EXPECTED_HOOKS:
        name = report.split()[0]
        assert len(re.findall(rf"BOOKEND-HOOK {name} ", text)) == 1, f"{name} ran again"
    # Against systemd's own status lines, too.
    pre_mount = position(text, r"BOOKEND-HOOK pre-mount-2 ")
    assert pre_mount < position(text, r"Mounting .*sysroot\.mount")
    assert position(text, r"BOOKEND-HOOK mount ") < position(
        text, r"Reached target .*Initrd Root File System"
    )
    switch = position(text, r"Starting .*initrd-switch-root\.service")
    assert position(text, r"BOOKEND-HOOK pre-pivot ") < switch
    # The activation ran once, in the real root once it was mounted; the pre-pivot hook
    # came after it and read its line in the initrd's /run, all before switch-root.
    activation = position(text, r"BOOKEND-ACTIVATION ran in=real")
    assert position(text, r"Mounted .*sysroot\.mount") < activation
    assert activation < position(text, r"BOOKEND-PRE-PIVOT saw=ran\b") < switch
    assert len(re.findall(r"BOOKEND-ACTIVATION ran", text)) == 1, "the activation ran again"
    # The real root finds exactly the one line the activation left in /run.
    assert done.status == 0 == job_status(job.path), done.why_failed()
    seen = read_job_output(job.path, "activation", tmp_path / "activation").read_text()
    assert seen == "ran\n"
    assert [line for line in text.splitlines() if "FAILED" in line] == []
    print(f"activation and hooks boot: {done.seconds:.0f} s")
