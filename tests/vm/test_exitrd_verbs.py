"""The initrd bookend builds from this machine boots the plain root disk, and the shutdown
verbs go through the exitrd, in one QEMU run of three boots: a reboot, a kexec, and a
power-off whose exit status the exitrd changes, as systemd's TEST-08-INITRD proves its
exitrd ran (`systemctl exit 123` comes out as 124).

Every boot goes through the initrd (its systemd reaches initrd.target and switches to
the root's) with no unit failed. The root is a copy of the cached disk, which the host
checks after the last shutdown (e2fsck, dumpe2fs): the exitrd's systemd-shutdown
unmounted it clean. The exitrd is unpacked at shutdown only (no RAM while running), and
a plain root's exitrd has no storage to take down, so no holders hook runs.
Run with `-rP` to see the measured figures.

1. The job installs the exitrd (harness.exitrdjob) and makes the root's report unit
   reboot instead of reporting: the shutdown pivots into the exitrd, whose /shutdown
   reboots; QEMU runs without -no-reboot, so the machine boots again.
2. The job loads the same kernel with kexec_file_load(2) (Python, as the root has no
   kexec-tools) and a command line with a new token; the report unit runs `systemctl
   kexec`: the exitrd's systemd-shutdown has no /sbin/kexec and calls reboot(RB_KEXEC)
   itself (systemd >= 252), and the kexec'd kernel boots with that command line, which
   QEMU never passed.
3. The kexec'd root reports the new token and powers off. A hook of the root's own
   systemd-shutdown leaves a random status N in /run/initramfs/exit-status (systemd 252
   refuses ExitCode= outside containers, so `systemctl exit N` cannot carry it; from 254
   on PID 1 passes --exit-code=N on to /shutdown, which the exitrd's hook reads first);
   the exitrd's hook writes N+1 to QEMU's isa-debug-exit port, and QEMU exits with
   ((N+1) << 1) | 1: only the exitrd could have made that status.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import bookend as package
from bookend.holders import ALL_DETACHED
from harness.exitrdjob import INSTALL_EXITRD_JOB, split_at_pivot
from harness.exitstatus import DEBUG_EXIT, console_line, new_status, pass_status_job, qemu_status
from harness.guestjob import make_job_disk, read_job_output
from harness.netroot import assert_clean_ext4
from harness.qemu import BootOptions, Disk, Kernel, boot
from harness.rootdisk import RootDisk, copy_of
from harness.token import failed_units, in_order, new_token
from harness.treecopy import put_file

# Three boots and three shutdowns through the exitrd, under emulation.
LIMIT = 1800
# Each boot: the initrd's systemd, its target and switch, then the root's systemd greets
# us without the initrd's name: the switch happened.
INITRD_TO_ROOT = (
    r"Welcome to .*\(bookend initrd\)",
    r"Reached target .*initrd\.target",
    r"Starting .*initrd-switch-root\.service",
    r"Welcome to Debian GNU/Linux [^\n]*!",
)
# Where each boot's kernel starts on the console.
KERNEL_START = re.compile(r"Linux version")
# What the report unit runs instead of its report, per stage (the job writes the next
# verb on the root, which keeps its writes across the reboot and the kexec: one QEMU).
NEXT_VERB = """\
#!/bin/sh
verb=$(cat /var/lib/bookend-verbs/next)
echo "BOOKEND-VERBS next=$verb" > /dev/ttyS0
case $verb in
    report) exec /usr/local/sbin/bookend-test-report ;;
    *) systemctl --no-block "$verb" ;;
esac
"""
REPORT_DROPIN = """\
[Service]
ExecStart=
ExecStart=/usr/local/sbin/bookend-verbs-next
"""
KEXEC_LOAD = """\
import ctypes, os, sys
kernel, initrd, cmdline = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read().strip()
libc = ctypes.CDLL(None, use_errno=True)
command = cmdline + b"\\0"
result = libc.syscall(ctypes.c_long(320), ctypes.c_int(os.open(kernel, os.O_RDONLY)),
                      ctypes.c_int(os.open(initrd, os.O_RDONLY)), ctypes.c_ulong(len(command)),
                      ctypes.c_char_p(command), ctypes.c_ulong(0))
if result != 0:
    sys.exit(f"kexec_file_load: {os.strerror(ctypes.get_errno())}")
"""
STAGES = """
state=/var/lib/bookend-verbs
stage=$(cat $state/stage 2>/dev/null || echo 0)
case $stage in
0)
    mkdir -p $state /etc/systemd/system/bookend-test-report.service.d
    cp /job/verbs/next-verb /usr/local/sbin/bookend-verbs-next
    cp /job/verbs/report.conf /etc/systemd/system/bookend-test-report.service.d/
    systemctl daemon-reload
    echo reboot > $state/next ;;
1)
    python3 /job/verbs/kexec-load.py /job/verbs/vmlinuz /job/verbs/initrd.img \\
        /job/verbs/kexec-cmdline
    cat /sys/kernel/kexec_loaded > /job/out/kexec-loaded
    echo kexec > $state/next ;;
2)
    cat /proc/cmdline > /job/out/kexec-cmdline
    sh -eux /job/verbs/pass-status
    echo report > $state/next ;;
esac
echo $((stage + 1)) > $state/stage
echo "BOOKEND-VERBS stage=$((stage + 1))" > /dev/ttyS0
"""


def test_plain_root_boots_and_reboot_kexec_and_exit_status_go_through_the_exitrd(
    kernel: Kernel, root_disk: RootDisk, host_initrd: Path, tmp_path: Path, console_log: Path
) -> None:
    # The shared image's exitrd has the exit-status hook (tests/vm/conftest.py); only
    # the exitrd goes on the job disk to be installed.
    images = tmp_path / "images"
    images.mkdir()
    for name in ("exitrd.img", "exitrd.img.sha256"):
        shutil.copy(host_initrd.with_name(name), images / name)

    status = new_status()
    first, kexeced = new_token(), new_token()
    root = f"root=UUID={root_disk.uuid} rw"
    kexec_cmdline = f"console=ttyS0 panic=-1 {root} bookend.job bookend.token={kexeced} "
    kexec_cmdline += "bookend.verbs=kexeced"
    verbs = tmp_path / "verbs"
    for name, text in (("next-verb", NEXT_VERB), ("report.conf", REPORT_DROPIN),
                       ("pass-status", pass_status_job(status)), ("kexec-load.py", KEXEC_LOAD),
                       ("kexec-cmdline", kexec_cmdline)):  # fmt: skip
        put_file(verbs, f"/{name}", text, 0o755)
    (verbs / "vmlinuz").write_bytes(kernel.path.read_bytes())
    (verbs / "initrd.img").write_bytes(host_initrd.read_bytes())
    # The install job's own part runs once: on later boots the unit is enabled already.
    once = "set -eux\n[ -e /var/lib/bookend-verbs/stage ] || {\n"
    install = INSTALL_EXITRD_JOB.replace("set -eux\n", once, 1) + "}\n"
    job = make_job_disk(tmp_path / "job.img", install + STAGES,
                        files={"src/bookend": Path(package.__file__).parent, "exitrd": images,
                               "verbs": verbs})  # fmt: skip
    # The shutdowns write to the root, so it gets its own copy of the cached disk.
    root_copy = tmp_path / "root.img"
    copy_of(root_disk.image, root_copy)
    options = BootOptions(kernel=kernel.path, initrd=host_initrd,
                          disks=(Disk(root_copy, snapshot=False), job), reboot=True, timeout=LIMIT,
                          append=f"{root} bookend.job bookend.token={first}",
                          plain_devices=DEBUG_EXIT, log_path=console_log)  # fmt: skip
    with boot(options) as vm:
        vm.expect(r"BOOKEND-VERBS stage=1", LIMIT)
        vm.expect(r"BOOKEND-VERBS next=reboot", LIMIT)
        vm.expect(r"Returning to initrd\.\.\.", LIMIT)
        vm.expect(r"(?<![-\w])shutdown\[1\]: Rebooting\.", LIMIT)
        vm.expect(r"Linux version", LIMIT)  # the machine comes back up
        vm.expect(r"BOOKEND-VERBS stage=2", LIMIT)
        vm.expect(r"BOOKEND-VERBS next=kexec", LIMIT)
        vm.expect(r"Returning to initrd\.\.\.", LIMIT)
        vm.expect(r"(?<![-\w])shutdown\[1\]: Rebooting with kexec\.", LIMIT)
        vm.expect(r"Linux version", LIMIT)  # the kexec'd kernel
        vm.expect(r"BOOKEND-VERBS stage=3", LIMIT)
        vm.expect(rf"BOOKEND-TOKEN {kexeced} booted-with-initrd=yes systemd-initrd=yes", LIMIT)
        vm.expect(r"Returning to initrd\.\.\.", LIMIT)
        vm.expect(re.escape(console_line(status)), LIMIT)
        exit_status = vm.wait_exit(300)
        text = vm.text
    assert exit_status == qemu_status(status), f"QEMU exited with {exit_status}"
    assert text.count("BOOKEND-TOKEN") == 1  # only the kexec'd boot reported
    assert read_job_output(job.path, "kexec-loaded", tmp_path / "loaded").read_text() == "1\n"
    cmdline = read_job_output(job.path, "kexec-cmdline", tmp_path / "cmdline").read_text()
    assert f"bookend.token={kexeced}" in cmdline and "bookend.verbs=kexeced" in cmdline
    boots = split_boots(text)
    assert len(boots) == 3, f"{len(boots)} kernels started; see {console_log}"
    for number, one in enumerate(boots, 1):
        in_order(one, INITRD_TO_ROOT)
        assert not failed_units(one), f"boot {number}: units failed; see {console_log}"
    copied = check_power_off(boots[-1], status)
    exitrd = host_initrd.with_name("exitrd.img")
    print(f"exitrd {exitrd.stat().st_size / 1e6:.1f} MB, copied at shutdown in {copied:.2f} s; "
          "RAM while running: 0")  # fmt: skip
    assert read_job_output(job.path, "ram-kib", tmp_path / "ram").read_text().strip() == "0"
    assert_clean_ext4(root_copy)  # unmounted clean: no journal to replay, nothing for fsck


def split_boots(text: str) -> list[str]:
    """The console of each boot, from its kernel's start to the next's."""
    starts = [found.start() for found in KERNEL_START.finditer(text)]
    return [text[start:end] for start, end in zip(starts, [*starts[1:], len(text)], strict=True)]


def check_power_off(last: str, status: int) -> float:
    """The last boot's power-off: the unit copied the exitrd, whose systemd-shutdown
    unmounted the root; a plain root's exitrd has no holders hook to run. Returns the
    seconds the copy took."""
    # A damaged exitrd is refused at install, a replaced one at shutdown: test_exitrd_trust.
    unpacked = re.search(r"bookend: exitrd \w{64} .*: \d+ entries copied .* in (\d+) ms", last)
    assert unpacked, "the unit did not copy the exitrd at shutdown"
    _, pivoted = split_at_pivot(last)
    # From here on the exitrd's /shutdown speaks: systemd-shutdown, named by argv[0].
    assert re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted), pivoted[-2000:]
    assert "shutdown[1]: All filesystems unmounted." in pivoted, pivoted[-3000:]
    assert ALL_DETACHED not in pivoted and "bookend-holders" not in pivoted, pivoted[-3000:]
    assert console_line(status) in pivoted, pivoted[-2000:]
    return int(unpacked.group(1)) / 1000
