"""The shutdown verbs through the exitrd, in one QEMU run of three boots: a reboot, a
kexec, and a power-off whose exit status the exitrd changes, as systemd's TEST-08-INITRD
proves its exitrd ran (`systemctl exit 123` comes out as 124).

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
from harness.exitrdjob import INSTALL_EXITRD_JOB
from harness.exitstatus import DEBUG_EXIT, console_line, new_status, pass_status_job, qemu_status
from harness.guestjob import make_job_disk, read_job_output
from harness.qemu import BootOptions, Kernel, boot
from harness.rootdisk import RootDisk
from harness.token import new_token
from harness.treecopy import put_file

# Three boots and three shutdowns through the exitrd, under emulation.
LIMIT = 1800
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


def test_reboot_kexec_and_exit_status_go_through_the_exitrd(
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
    options = BootOptions(kernel=kernel.path, initrd=host_initrd,
                          disks=(root_disk.image, job), reboot=True, timeout=LIMIT,
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
