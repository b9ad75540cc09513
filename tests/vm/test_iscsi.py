"""iSCSI root: a LUN served by tgtd on the host's loopback boots, switches root and
powers off through the exitrd, which logs out of every session after the old root is
unmounted; iscsid, a root storage daemon, lives from the initrd until then.

tgtd (started here, on a free port and a control socket of its own) serves a copy of
the cached root disk as target 1 and a small blank disk as target 2, both named on the
command line (two netroot=iscsi:); the guest reaches them only through a restricted
user network's relayed forward (harness/network.py), logging in to the guest-side
portal directly.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.exitrdjob import SHUTDOWN_LIMIT, after, install_exitrd_job, shutdown_through
from harness.guestjob import read_job_output, run_job
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.netroot import (
    DETECTION_CHECK,
    DETECTION_FILES,
    assert_clean_ext4,
    copy_of,
    expect_initrd_then_root,
    module_index_tree,
    record_scenario,
)
from harness.network import USER_SERVER_ADDRESS, user_network
from harness.qemu import BootOptions, Kernel
from harness.rootdisk import RootDisk
from harness.servers import ISCSI_PORT, serve_iscsi
from harness.stackdisks import StackDisks

BOOT_LIMIT = 900
ROOT_IQN = "iqn.2026-12.test.bookend:root"
SPARE_IQN = "iqn.2026-12.test.bookend:spare"
INITIATOR = "iqn.2026-12.test.bookend:client"

# After the exitrd is installed, the job also records the daemon and the sessions as
# the running root sees them, and what bookend's hostonly detection finds on it.
ISCSI_CHECKS = (
    DETECTION_CHECK
    + """
pid=$(systemctl show -P MainPID bookend-iscsid.service)
state=$(systemctl show -P ActiveState bookend-iscsid.service)
argv0=$(tr '\\0' '\\n' < /proc/$pid/cmdline | head -n 1)
exe=$(readlink /proc/$pid/exe)
echo "$state $pid $argv0 $exe" > /job/out/daemon
cat /sys/class/iscsi_session/session*/targetname | sort > /job/out/targets
cat /sys/class/iscsi_session/session*/initiatorname | sort -u > /job/out/initiator
findmnt -no SOURCE / > /job/out/root-source
files=$(systemctl show -P ActiveState bookend-iscsid-files.service)
if [ -d /proc/$pid/root/sys/class/iscsi_session ] && [ -s /proc/$pid/root/etc/passwd ]; then
    echo "$files yes" > /job/out/iscsid-files
else
    echo "$files no" > /job/out/iscsid-files
fi
"""
)


@pytest.fixture(scope="module")
def iscsi_images(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initrd (and its exitrd beside it) with the iscsi feature and a virtio NIC driver."""
    directory = tmp_path_factory.mktemp("iscsi-images")
    build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                "--add-feature", "iscsi", "--add-module", "virtio_net")  # fmt: skip
    return directory


def test_iscsi_root_boots_and_the_exitrd_logs_out(
    kernel: Kernel, root_disk: RootDisk, iscsi_images: Path, console_log: Path, tmp_path: Path
) -> None:
    lun = copy_of(root_disk.image, tmp_path / "root.raw")
    spare = tmp_path / "spare.raw"
    spare.write_bytes(b"")
    subprocess.run(["truncate", "-s", "16M", str(spare)], check=True)
    index = module_index_tree(kernel.version, tmp_path / "kindex")
    job = install_exitrd_job(tmp_path / "job.img", iscsi_images, then=ISCSI_CHECKS,
                             files={DETECTION_FILES: index})  # fmt: skip
    portal = f"{USER_SERVER_ADDRESS}::{ISCSI_PORT}::"
    append = (f"root=UUID={root_disk.uuid} rw ip=dhcp rd.iscsi.initiator={INITIATOR} "
              f"netroot=iscsi:{portal}{ROOT_IQN} netroot=iscsi:{portal}{SPARE_IQN}")  # fmt: skip
    with serve_iscsi({ROOT_IQN: lun, SPARE_IQN: spare}, tmp_path / "tgtd.log") as port:
        nic = user_network(relayed=((USER_SERVER_ADDRESS, ISCSI_PORT, port),))
        options = BootOptions(kernel=kernel.path, initrd=iscsi_images / "initrd.img",
                              disks=(job,), append=append, network=nic.args,
                              timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip
        run = run_job(options, on_the_way=expect_initrd_then_root, exit_timeout=SHUTDOWN_LIMIT)
    assert run.status == 0, f"the job failed; see {console_log}"
    text = run.text
    record_scenario("iscsi root, two targets", text, iscsi_images / "initrd.img")

    daemon = read_job_output(job.path, "daemon", tmp_path / "daemon").read_text()
    state, pid, argv0, exe = daemon.split(maxsplit=3)
    # Alive in the real root, spared by its "@", running from the initrd's files.
    assert (state, argv0) == ("active", "@iscsid"), daemon
    assert exe.strip().endswith("iscsid (deleted)"), daemon
    targets = read_job_output(job.path, "targets", tmp_path / "targets").read_text()
    assert targets.split() == [ROOT_IQN, SPARE_IQN]
    initiator = read_job_output(job.path, "initiator", tmp_path / "initiator").read_text()
    assert initiator.strip() == INITIATOR
    # In the running root, iscsid's emptied initrd root has the files it needs again.
    files = read_job_output(job.path, "iscsid-files", tmp_path / "iscsid-files").read_text()
    assert files.split() == ["active", "yes"], files
    root = read_job_output(job.path, "root-source", tmp_path / "root-source").read_text()
    assert re.fullmatch(r"/dev/sd[a-z]+", root.strip()), root
    # Hostonly detection on the live root: the disk's iSCSI session, its transport, and
    # the NIC with the route to the portal.
    detection = read_job_output(job.path, "detection", tmp_path / "detection").read_text()
    assert "storage iscsi network\n" in detection, detection
    assert "network-interfaces ens3\n" in detection, detection
    assert re.search(r"^module iscsi_tcp: iSCSI transport of session\d+ for / ", detection, re.M)
    driver = rf"^module virtio_net: .*NIC ens3 \(route to {re.escape(USER_SERVER_ADDRESS)}\) "
    assert re.search(
        driver + rf"for iSCSI session\d+ to {re.escape(ROOT_IQN)} ", detection, re.M
    ), detection

    before, marker, pivoted = text.partition("Returning to initrd...")
    assert marker, "no pivot into the exitrd on the console"
    assert f"(pid {pid})" not in before  # nothing stopped the daemon in the running system
    unmounted = re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted)
    assert unmounted, pivoted[-3000:]
    last_logout = 0
    for iqn in (ROOT_IQN, SPARE_IQN):
        logout = re.search(
            rf"bookend: logging out of iSCSI session\d+ to {re.escape(iqn)} \(/oldroot unmounted\)",
            pivoted,
        )
        assert logout and logout.start() > unmounted.start(), pivoted[-3000:]
        # iscsiadm's own word that iscsid logged the session out
        done = re.search(
            rf"Logout of \[sid: \d+, target: {re.escape(iqn)}, [^]]*\] successful", pivoted
        )
        assert done and done.start() > logout.start(), pivoted[-3000:]
        last_logout = max(last_logout, done.start())
    assert "50-iscsi failed" not in pivoted
    stopped = re.search(rf"bookend: stopping root storage daemon iscsid \(pid {pid}\)", pivoted)
    assert stopped and stopped.start() > last_logout, pivoted[-3000:]
    # The target's copy of the root, read on the host once the guest is off: clean.
    assert_clean_ext4(lun)


def test_lvm_on_luks2_on_an_iscsi_lun_unlocks_boots_and_detaches(
    kernel: Kernel, stacks: dict[str, StackDisks], root_boot: BootOptions, tmp_path: Path
) -> None:
    """Issue 14's second proof: the cached LVM-on-LUKS2 disk served as the LUN."""
    stack = stacks["lvm-on-luks"]
    assert stack.passphrase and stack.luks_uuid
    lun = copy_of(stack.disks[0], tmp_path / "stack.raw")
    images = tmp_path / "images"
    images.mkdir()
    build_image(images / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4, "--add-feature",
                "iscsi", "--add-feature", "lvm", "--add-feature", "luks", "--add-module",
                "virtio_net")  # fmt: skip
    index = module_index_tree(kernel.version, tmp_path / "kindex")
    job = install_exitrd_job(tmp_path / "job.img", images, then=DETECTION_CHECK,
                             files={DETECTION_FILES: index})  # fmt: skip
    portal = f"{USER_SERVER_ADDRESS}::{ISCSI_PORT}::"
    append = (f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} "
              f"rw ip=dhcp netroot=iscsi:{portal}{ROOT_IQN}")  # fmt: skip
    with serve_iscsi({ROOT_IQN: lun}, tmp_path / "tgtd.log") as port:
        nic = user_network(relayed=((USER_SERVER_ADDRESS, ISCSI_PORT, port),))
        options = replace(root_boot, initrd=images / "initrd.img", disks=(job,), append=append,
                          network=nic.args)  # fmt: skip
        text = shutdown_through(options, stack.passphrase)
    record_scenario("iscsi root, LVM on LUKS2", text, images / "initrd.img")
    # Hostonly detection on the live root sees the whole stack, down to the NIC.
    detection = read_job_output(job.path, "detection", tmp_path / "detection").read_text()
    assert "storage iscsi luks lvm network\n" in detection, detection
    assert "network-interfaces ens3\n" in detection, detection
    pivoted = after(text, "Returning to initrd...")
    detached = pivoted.find("shutdown[1]: All DM devices detached.")
    assert detached >= 0, pivoted[-3000:]
    done = re.search(
        rf"Logout of \[sid: \d+, target: {re.escape(ROOT_IQN)}, [^]]*\] successful", pivoted
    )
    assert done and done.start() > detached, pivoted[-3000:]
