"""NFS roots: the generator's reading of root=nfs:, root=nfs4:, netroot= and the kernel's
root=/dev/nfs nfsroot=, and the feature's parts in the initrd and the exitrd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bookend.exitrd import make_exitrd_plan
from bookend.features.base import RequestKind
from bookend.features.nfs import DETACH_SCRIPT, DETACH_STEP, GENERATOR, GENERATOR_SCRIPT
from bookend.features.storage_daemons import STOP_HOOK
from bookend.plan import make_plan
from tests.unit.conftest import load_config
from tests.unit.test_network_roots import run_generator, unit_lines

MOUNT = "early/sysroot.mount"
STATIC_IP = "ip=192.168.50.2:192.168.50.1::255.255.255.0:client:ens3:off"


def mount_of(cmdline: str, tmp_path: Path) -> dict[str, str]:
    """The [Mount] settings of the sysroot.mount the generator writes for cmdline."""
    written = run_generator(GENERATOR_SCRIPT, cmdline, tmp_path)
    assert written["early/initrd-root-fs.target.requires/sysroot.mount"] == "-> ../sysroot.mount"
    lines = unit_lines(written[MOUNT])
    section = lines[lines.index("[Mount]") + 1 :]
    return dict(line.split("=", 1) for line in section)


@pytest.mark.parametrize(
    ("cmdline", "what", "kind", "options"),
    [
        # dracut's forms: the server in the spec, options after the path.
        ("root=nfs4:192.168.50.1:/srv/root rw", "192.168.50.1:/srv/root", "nfs4", "rw"),
        (
            "root=nfs:10.0.0.1:/exports/r:vers=3,tcp rootflags=noatime",
            "10.0.0.1:/exports/r",
            "nfs",
            "ro,vers=3,tcp,noatime,nolock",
        ),
        (
            "netroot=nfs4:[fd00::1]:/srv/root:sec=sys rw",
            "[fd00::1]:/srv/root",
            "nfs4",
            "rw,sec=sys",
        ),
        # No server: ip='s second field names it.
        (f"root=nfs:/srv/root {STATIC_IP} rw", "192.168.50.1:/srv/root", "nfs", "rw,nolock"),
        # The kernel's form, with and without the server in nfsroot=.
        (
            f"root=/dev/nfs nfsroot=/srv/root,vers=3 {STATIC_IP} rw",
            "192.168.50.1:/srv/root",
            "nfs",
            "rw,vers=3,nolock",
        ),
        (
            "root=/dev/nfs nfsroot=10.1.1.1:/r,vers=4.2,proto=tcp ro",
            "10.1.1.1:/r",
            "nfs",
            "ro,vers=4.2,proto=tcp,nolock",
        ),
        # nolock given already: not twice.
        ("root=nfs:s:/r:vers=3,nolock", "s:/r", "nfs", "ro,vers=3,nolock"),
    ],
)
def test_command_line_forms_become_sysroot_mount(
    tmp_path: Path, cmdline: str, what: str, kind: str, options: str
) -> None:
    assert mount_of(cmdline, tmp_path) == {
        "What": what,
        "Where": "/sysroot",
        "Type": kind,
        "Options": options,
    }


def test_mount_waits_for_the_network_and_serves_initrd_root_fs(tmp_path: Path) -> None:
    written = run_generator(GENERATOR_SCRIPT, f"root=nfs4:h:/r rw {STATIC_IP}", tmp_path)
    unit = unit_lines(written[MOUNT])
    assert "Wants=network-online.target" in unit and "After=network-online.target" in unit
    assert "Before=initrd-root-fs.target" in unit


def test_explicit_lock_is_kept_with_a_warning(tmp_path: Path) -> None:
    assert mount_of("root=nfs:s:/r:vers=3,lock", tmp_path)["Options"] == "ro,vers=3,lock"
    assert "'lock' on an NFSv3 root needs rpc.statd" in (tmp_path / "kmsg").read_text()


@pytest.mark.parametrize(
    ("cmdline", "complaint"),
    [
        ("root=/dev/nfs ip=dhcp", "root=/dev/nfs needs nfsroot="),
        ("root=nfs:/srv/root ip=dhcp", "no server or path for the NFS root"),
    ],
)
def test_unusable_nfs_roots_are_reported(tmp_path: Path, cmdline: str, complaint: str) -> None:
    assert run_generator(GENERATOR_SCRIPT, cmdline, tmp_path) == {}
    assert complaint in (tmp_path / "kmsg").read_text()


def test_other_roots_write_nothing(tmp_path: Path) -> None:
    assert run_generator(GENERATOR_SCRIPT, "root=UUID=1 rw nfsroot=/x", tmp_path) == {}
    assert not (tmp_path / "kmsg").exists()


def nfs_sysroot(root_tree: Path) -> Path:
    (root_tree / "usr/sbin/mount.nfs").write_text("")
    (root_tree / "etc/netconfig").write_text("tcp tpi_cots_ord v inet tcp - -\n")
    return root_tree


def test_nfs_feature_brings_network_mount_helper_and_modules(root_tree: Path) -> None:
    config = load_config(
        None, {"sysroot": str(nfs_sysroot(root_tree)), "features": ["nfs"], "mode": "generic"}
    )
    plan = make_plan(config)
    assert plan.features.index("network") < plan.features.index("nfs")
    files = {g.entry.path: g.entry for g in plan.generated}
    assert files[GENERATOR].data == GENERATOR_SCRIPT.encode() and files[GENERATOR].mode == 0o755
    wanted = {(r.kind, r.name, r.optional) for r in plan.requests}
    assert {
        (RequestKind.EXECUTABLE, "mount.nfs", False),
        (RequestKind.EXECUTABLE, "mount.nfs4", True),
        (RequestKind.MODULE, "nfs", False),
        (RequestKind.MODULE, "nfsv3", True),
        (RequestKind.MODULE, "nfsv4", True),
        (RequestKind.PATH, "/etc/netconfig", False),
    } <= wanted
    exitrd = make_exitrd_plan(config, plan)
    steps = {g.entry.path: g.entry for g in exitrd.generated}
    assert steps[DETACH_STEP].data == DETACH_SCRIPT.encode() and STOP_HOOK in steps


def run_detach_step(tmp_path: Path, mounts: str) -> tuple[str, str]:
    """The exitrd's step with /proc/mounts, /dev/kmsg and umount faked: what it said and ran."""
    script = DETACH_SCRIPT.replace("/proc/mounts", str(tmp_path / "mounts"))
    script = script.replace("/dev/kmsg", str(tmp_path / "kmsg"))
    (tmp_path / "mounts").write_text(mounts)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/umount").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/umount\n')
    (tmp_path / "bin/umount").chmod(0o755)
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    ran = tmp_path / "umount"
    return (tmp_path / "kmsg").read_text(), ran.read_text() if ran.exists() else ""


def test_detach_step_says_the_root_is_gone(tmp_path: Path) -> None:
    said, ran = run_detach_step(tmp_path, "proc /proc proc rw 0 0\ntmpfs / tmpfs rw 0 0\n")
    assert said == "bookend: NFS root unmounted (no NFS mount left)\n" and ran == ""


def test_detach_step_forces_off_what_is_left(tmp_path: Path) -> None:
    said, ran = run_detach_step(tmp_path, "10.0.0.1:/r /oldroot nfs4 rw 0 0\n")
    assert said == "bookend: NFS mount /oldroot is still mounted: forcing it off\n"
    assert ran == "-f -l /oldroot\n"
