"""A root storage daemon declared in the config starts in the initrd, is alive (and runs
from the initrd's files) after switch-root, and is stopped only in the exitrd.

As an administrator would: the first boot declares the daemon (its unit exists only in
the guest), builds the images there and installs the exitrd unit; the second boots
them from that same root (a writable overlay of the cached disk) and shuts down
through the exitrd.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import bookend
from harness.guestjob import make_job_disk, read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import BootOptions, Disk, Kernel
from harness.rootdisk import RootDisk

BOOT_LIMIT = 900
# From the token to QEMU's exit, through the exitrd.
SHUTDOWN_LIMIT = 300
DAEMON = "bookend-test-storaged.service"

BUILD_JOB = f"""\
#!/bin/sh
set -eux
cat > /etc/systemd/system/{DAEMON} <<'EOF'
[Unit]
Description=bookend test root storage daemon
[Service]
ExecStart=/usr/bin/sleep infinity
EOF
mkdir -p /usr/local/lib/bookend-src
cp -r /job/src/bookend /usr/local/lib/bookend-src/
cd /usr/local/lib/bookend-src
python3 -m bookend build -o /boot/initrd.img --add-storage-daemon {DAEMON}
python3 -m bookend install-exitrd --image /boot/exitrd.img --storage-daemon {DAEMON}
cp /boot/initrd.img /job/out/
"""

CHECK_JOB = f"""\
#!/bin/sh
set -eux
pid=$(systemctl show -P MainPID {DAEMON})
state=$(systemctl show -P ActiveState {DAEMON})
argv0=$(tr '\\0' '\\n' < /proc/$pid/cmdline | head -n 1)
exe=$(readlink /proc/$pid/exe)
echo "$state $pid $argv0 $exe" > /job/out/daemon
"""


def test_storage_daemon_lives_from_initrd_to_exitrd(
    kernel: Kernel, root_disk: RootDisk, root_boot: BootOptions, tmp_path: Path
) -> None:
    source = Path(bookend.__file__).parent
    host_initrd = build_image(tmp_path / "host-initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                              "--no-exitrd")  # fmt: skip
    # Both boots share one root, whose writes land in an overlay, not the cached disk.
    overlay = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", str(root_disk.image), str(overlay)], check=True)  # fmt: skip
    root = Disk(overlay, format="qcow2", snapshot=False)
    build = make_job_disk(tmp_path / "build.img", BUILD_JOB, files={"src/bookend": source},
                          modules_kver=kernel.version)  # fmt: skip
    built = run_job(replace(root_boot, initrd=host_initrd, disks=(root, build), timeout=BOOT_LIMIT,
                            log_path=tmp_path / "build-console.log"),
                    exit_timeout=SHUTDOWN_LIMIT)  # fmt: skip
    assert built.status == 0, f"the build in the guest failed; see {tmp_path}/build-console.log"
    initrd = read_job_output(build.path, "initrd.img", tmp_path / "initrd.img")

    check = make_job_disk(tmp_path / "check.img", CHECK_JOB)
    options = replace(root_boot, initrd=initrd, disks=(root, check), timeout=BOOT_LIMIT)
    checked = run_job(options, exit_timeout=SHUTDOWN_LIMIT)
    assert checked.status == 0, f"the check in the guest failed; see {root_boot.log_path}"
    text = checked.text
    daemon = read_job_output(check.path, "daemon", tmp_path / "daemon").read_text()
    state, pid, argv0, exe = daemon.split(maxsplit=3)
    # Alive in the real root, spared by its "@", and running from the initrd's files,
    # which switch-root deleted.
    assert (state, argv0) == ("active", "@sleep")
    assert exe.strip() == "/usr/bin/sleep (deleted)"
    before, marker, after = text.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    assert f"stopping root storage daemon sleep (pid {pid})" not in before
    assert re.search(rf"bookend: stopping root storage daemon sleep \(pid {pid}\)", after), after
