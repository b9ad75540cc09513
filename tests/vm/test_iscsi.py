"""iSCSI root: a LUN served by tgtd on the host's loopback boots, switches root and
powers off through the exitrd, which logs out of every session after the old root is
unmounted; iscsid, a root storage daemon, lives from the initrd until then.

tgtd (started here, on a free port and a control socket of its own) serves a copy of
the cached root disk as target 1 and a small blank disk as target 2, both named on the
command line (two netroot=iscsi:); the guest reaches them only through a restricted
user network's relayed forward (harness/network.py), logging in to the guest-side
portal directly.

The two-target boot runs on each guest (harness/guests.py): Debian 12, whose systemd
252 spares iscsid by its "@" argv[0], and Debian 13 (trixie's kernel, images built from
the trixie tree, the trixie root disk as the LUN), whose systemd 257 spares it by
SurviveFinalKillSignal=yes. On both, iscsid's PID is the same in the initrd (its unit
announces it), in the running root (the job reads it) and in the exitrd (the hook names
the PID it stops after the unmount and the logouts).

On Debian 12 the same boot also takes the target away while the root runs (issue 14's
fifth proof, harness/outage.py): tgtd stopped for OUTAGE_S and started again on its
port, iscsid's new connections meanwhile held by the relay (RELAY_WAIT_S); the kernel
sees the connections go, iscsid (the same PID) logs in again, and a write begun during
the outage is synced after it and found in the LUN.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bookend.features.storage_daemons import SURVIVE_FINAL_KILL_SINCE
from harness.exitrdjob import (
    SHUTDOWN_LIMIT,
    after,
    install_exitrd_job,
    shutdown_through,
    split_at_pivot,
)
from harness.guestjob import read_job_output, run_job
from harness.guests import DEBIAN12, DEBIAN13, Guest
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.netroot import (
    DETECTION_CHECK,
    DETECTION_FILES,
    SYSTEMD_START,
    assert_clean_ext4,
    expect_initrd_then_root,
    ext4_file_text,
    module_index_tree,
    record_scenario,
)
from harness.network import USER_SERVER_ADDRESS, user_network
from harness.outage import (
    ISCSI_WATCH,
    OUTAGE_S,
    assert_write_waited_for_the_server,
    expect_root_then,
    outage_job,
    outage_log,
)
from harness.qemu import BootOptions, Kernel
from harness.rootdisk import copy_of
from harness.servers import ISCSI_PORT, Tgtd, iscsi_server, serve_iscsi
from harness.stackdisks import StackDisks
from harness.token import new_token
from tests.vm.conftest import GUESTS

BOOT_LIMIT = 900
ROOT_IQN = "iqn.2026-12.test.bookend:root"
SPARE_IQN = "iqn.2026-12.test.bookend:spare"
INITIATOR = "iqn.2026-12.test.bookend:client"

# After the exitrd is installed, the job also records the daemon and the sessions as
# the running root sees them, the daemon's unit as the generator wrote it, systemd, and
# what bookend's hostonly detection finds on it.
ISCSI_CHECKS = (
    DETECTION_CHECK
    + """
pid=$(systemctl show -P MainPID bookend-iscsid.service)
state=$(systemctl show -P ActiveState bookend-iscsid.service)
argv0=$(tr '\\0' '\\n' < /proc/$pid/cmdline | head -n 1)
exe=$(readlink /proc/$pid/exe)
echo "$state $pid $argv0 $exe" > /job/out/daemon
grep -E '^(ExecStart|SurviveFinalKillSignal)=' /run/systemd/system/bookend-iscsid.service \\
    > /job/out/daemon-unit
systemctl --version | head -n 1 > /job/out/systemd
cat /sys/class/iscsi_session/session*/targetname | sort > /job/out/targets
cat /sys/class/iscsi_session/session*/initiatorname | sort -u > /job/out/initiator
findmnt -no SOURCE / > /job/out/root-source
for unit in iscsid.service iscsid.socket open-iscsi.service; do
    echo "$unit $(systemctl show -P LoadState $unit) $(systemctl show -P ActiveState $unit)"
done > /job/out/open-iscsi
files=$(systemctl show -P ActiveState bookend-iscsid-files.service)
if [ -d /proc/$pid/root/sys/class/iscsi_session ] && [ -s /proc/$pid/root/etc/passwd ]; then
    echo "$files yes" > /job/out/iscsid-files
else
    echo "$files no" > /job/out/iscsid-files
fi
"""
)
# The daemon's unit announces its PID once it runs, in the initrd (storage_daemons.py).
ANNOUNCED = r"bookend: root storage daemon iscsid runs as pid (\d+)"
# How each guest's systemd spares the daemon from the final kill: "@" argv[0] before
# 255, SurviveFinalKillSignal=yes from then on.
SURVIVES_BY_CGROUP = {DEBIAN12: False, DEBIAN13: True}
# The guest whose boot also has the target taken away for OUTAGE_S as its root runs.
TARGET_AWAY_ON = DEBIAN12
# While tgtd is away, iscsid's new connections wait in the relay for it to come back
# (a target host that does not answer) instead of being closed at once (one that
# refuses). On Debian 12, after logins closed at once, iscsid now and then never tried
# one of the two sessions again (1 boot in 18 here, and in CI; nothing in the kernel's
# log says why, and iscsid's own log has nowhere to go after switch-root), and the
# root's I/O failed once the kernel's 120 s replacement timeout ran out.
RELAY_WAIT_S = 60


@pytest.fixture(scope="module")
def iscsi_images(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initrd (and its exitrd beside it) with the iscsi feature and a virtio NIC driver."""
    directory = tmp_path_factory.mktemp("iscsi-images")
    guest.build_image(directory / "initrd.img", *QEMU_VIRTIO_EXT4,
                      "--add-feature", "iscsi", "--add-module", "virtio_net")  # fmt: skip
    return directory


@pytest.mark.parametrize("guest", GUESTS, indirect=True)
def test_iscsi_root_boots_and_the_exitrd_logs_out(
    guest: Guest, iscsi_images: Path, console_log: Path, tmp_path: Path
) -> None:
    """Issue 14's fourth proof too: iscsid keeps one PID from the initrd, through the
    running root, to the exitrd after the unmount and the logouts, on systemd 252 ("@")
    and 257 (SurviveFinalKillSignal=yes); on Debian 12 through the target's outage
    (the fifth proof) as well."""
    lun = copy_of(guest.root.image, tmp_path / "root.raw")
    spare = tmp_path / "spare.raw"
    spare.write_bytes(b"")
    subprocess.run(["truncate", "-s", "16M", str(spare)], check=True)
    index = module_index_tree(guest.kernel.version, tmp_path / "kindex", guest.sysroot or Path("/"))
    away, token = guest.name == TARGET_AWAY_ON, new_token()
    then = ISCSI_CHECKS + (outage_job(ISCSI_WATCH, token) if away else "")
    job = install_exitrd_job(tmp_path / "job.img", iscsi_images, then=then,
                             files={DETECTION_FILES: index})  # fmt: skip
    portal = f"{USER_SERVER_ADDRESS}::{ISCSI_PORT}::"
    append = (f"root=UUID={guest.root.uuid} rw ip=dhcp rd.iscsi.initiator={INITIATOR} "
              f"netroot=iscsi:{portal}{ROOT_IQN} netroot=iscsi:{portal}{SPARE_IQN}")  # fmt: skip
    with iscsi_server({ROOT_IQN: lun, SPARE_IQN: spare}, tmp_path / "tgtd.log") as server:
        nic = user_network(relayed=((USER_SERVER_ADDRESS, ISCSI_PORT, server.port),),
                           relay_wait=RELAY_WAIT_S if away else 0)  # fmt: skip
        options = BootOptions(kernel=guest.kernel.path, initrd=iscsi_images / "initrd.img",
                              disks=(job,), append=append, network=nic.args,
                              timeout=BOOT_LIMIT, log_path=console_log)  # fmt: skip
        follow = expect_root_then(target_away(server)) if away else expect_initrd_then_root
        run = run_job(options, on_the_way=follow, exit_timeout=SHUTDOWN_LIMIT)
    assert run.status == 0, run.why_failed(console_log)
    name = "iscsi root, two targets" + ("" if guest.name == DEBIAN12 else f" ({guest.name})")
    record_scenario(name, run.text, iscsi_images / "initrd.img")

    def output(name: str) -> str:
        return read_job_output(job.path, name, tmp_path / name).read_text()

    pid = assert_running_root(guest, output)
    assert_detected(output("detection"))
    # A root with open-iscsi of its own logs out of the sessions it does not stand on
    # as it stops open-iscsi.service (Debian's umountiscsi.sh keeps the root's).
    exitrd_logs_out = [ROOT_IQN] if has_own_open_iscsi(output("open-iscsi")) else []
    assert_one_daemon_from_initrd_to_exitrd(run.text, pid, exitrd_logs_out or [ROOT_IQN, SPARE_IQN])
    if away:
        assert_survived_the_target_away(run.text, output, lun, token)
    # The target's copy of the root, read on the host once the guest is off: clean.
    assert_clean_ext4(lun)


def target_away(server: Tgtd) -> Callable[[], None]:
    """The outage: tgtd gone for OUTAGE_S, then back on the same port with the same
    targets and LUNs."""

    def outage() -> None:
        server.stop(grace=0)
        time.sleep(OUTAGE_S)
        server.start()

    return outage


def assert_survived_the_target_away(
    text: str, output: Callable[[str], str], lun: Path, token: str
) -> None:
    """The job saw the sessions fail and come back, a write begun in the outage waited
    for it, and both writes are in the LUN; the kernel saw the connections go."""
    assert_write_waited_for_the_server(outage_log(output("outage")))
    assert output("session-state").strip() == "FAILED"
    before, _ = split_at_pivot(text)
    assert re.search(r"connection\d+:0: detected conn error", before), before[-3000:]
    assert ext4_file_text(lun, "/outage-proof").split() == [token, "during", token, "after"]


def assert_running_root(guest: Guest, output: Callable[[str], str]) -> str:
    """What the job saw in the running root: iscsid alive, from the initrd's files,
    spared the guest's way, with both sessions. Returns iscsid's PID."""
    daemon = output("daemon")
    state, pid, argv0, exe = daemon.split(maxsplit=3)
    assert state == "active", daemon
    assert exe.strip().endswith("iscsid (deleted)"), daemon
    assert_spared_the_guests_way(guest, argv0, output("daemon-unit"), output("systemd"))
    assert output("targets").split() == [ROOT_IQN, SPARE_IQN]
    assert output("initiator").strip() == INITIATOR
    # iscsid's emptied initrd root has the files it needs again.
    assert output("iscsid-files").split() == ["active", "yes"]
    root = output("root-source")
    assert re.fullmatch(r"/dev/sd[a-z]+", root.strip()), root
    return pid


def assert_detected(detection: str) -> None:
    """Hostonly detection on the live root: the disk's iSCSI session, its transport, and
    the NIC with the route to the portal."""
    assert "storage iscsi network\n" in detection, detection
    assert "network-interfaces ens3\n" in detection, detection
    assert re.search(r"^module iscsi_tcp: iSCSI transport of session\d+ for / ", detection, re.M)
    driver = rf"^module virtio_net: .*NIC ens3 \(route to {re.escape(USER_SERVER_ADDRESS)}\) "
    assert re.search(
        driver + rf"for iSCSI session\d+ to {re.escape(ROOT_IQN)} ", detection, re.M
    ), detection


def has_own_open_iscsi(states: str) -> bool:
    """Whether the real root has open-iscsi's units; if so, its iscsid units are
    masked (the initrd's generator did it) and open-iscsi.service ran."""
    units = {unit: (load, active) for unit, load, active in map(str.split, states.splitlines())}
    if units["open-iscsi.service"][0] == "not-found":
        return False
    assert units["iscsid.service"] == ("masked", "inactive"), states
    assert units["iscsid.socket"] == ("masked", "inactive"), states
    assert units["open-iscsi.service"] == ("loaded", "active"), states
    return True


def assert_one_daemon_from_initrd_to_exitrd(text: str, pid: str, targets: list[str]) -> None:
    """The console: iscsid announced pid once, in the initrd; nothing stopped it while
    the system ran; the exitrd logged out of targets after the unmount, then stopped
    pid."""
    announced = list(re.finditer(ANNOUNCED, text))
    # Once: the unit never started iscsid again.
    assert [found.group(1) for found in announced] == [pid], text[-3000:]
    real_root = list(SYSTEMD_START.finditer(text))[1].start()
    assert announced[0].start() < real_root, "iscsid's PID announced only in the real root"
    before, pivoted = split_at_pivot(text)
    assert "Stopping bookend-iscsid" not in before and "Stopped bookend-iscsid" not in before
    assert "bookend: stopping root storage daemon" not in before
    unmounted = re.search(r"shutdown\[1\]: .*(Unmounting|unmounted)", pivoted)
    assert unmounted, pivoted[-3000:]
    assert not re.search(rf"Logout of \[sid: \d+, target: {re.escape(ROOT_IQN)},", before)
    last_logout = 0
    for iqn in targets:
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


def assert_spared_the_guests_way(guest: Guest, argv0: str, unit: str, systemd: str) -> None:
    """The guest runs the systemd its images were built for, and the daemon's unit
    (as the generator wrote it at boot) spares iscsid the way that systemd knows."""
    assert systemd.split()[:2] == ["systemd", str(guest.systemd)], systemd
    by_cgroup = guest.systemd >= SURVIVE_FINAL_KILL_SINCE
    assert by_cgroup == SURVIVES_BY_CGROUP[guest.name], guest
    starts = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(starts) == 1, unit
    if by_cgroup:
        assert "SurviveFinalKillSignal=yes" in unit.splitlines(), unit
        assert "@" not in starts[0] and not argv0.startswith("@"), (unit, argv0)
    else:
        assert "SurviveFinalKillSignal" not in unit, unit
        assert starts[0].startswith("ExecStart=@/") and " @iscsid " in starts[0], unit
        assert argv0 == "@iscsid", argv0


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
