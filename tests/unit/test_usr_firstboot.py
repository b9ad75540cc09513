"""The usr, repart and verity features on fixture sysroots: what switches them on (the
sysroot's fstab and repart.d, hostonly only; a root hash on the command line, or generic
mode and a sysroot with veritysetup), what they bring (the /usr filesystem's tools, mkfs
for a definition's Format=), fsck's result sent to the console; and what systemd-repart
makes of an image whose GPT ends before its disk does (harness/usrdisk.py's first-boot
disk), and the partition UUIDs its verity disk derives from the root hash."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bookend.features import ALL, filesystems, repart, usr, verity
from bookend.features.base import FeatureContext, Generated, Request, split_contribution
from bookend.plan import switched_on
from bookend.storage import HostDetection
from bookend.sysroot import Sysroot
from harness.usrdisk import gpt_ends, partition_uuids
from tests.unit.conftest import load_config

HOSTONLY = HostDetection(modules=(), filesystems=("ext4",), block_devices=(), storage=())

FSTAB = """\
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=1111 / ext4 errors=remount-ro,x-systemd.growfs 0 1
UUID=2222 /usr/ xfs ro 0 2
UUID=3333 /home ext4 defaults,x-systemd.growfs 0 2
"""


def _on(root: Path, detection: HostDetection | None = HOSTONLY) -> set[str]:
    config = load_config(None, {"sysroot": str(root), "mode": "generic"})
    return set(switched_on(config, detection, ALL)) & {"usr", "repart"}


def _requests(root: Path, compute_of: str, **settings: object) -> list[Request]:
    config = load_config(None, {"sysroot": str(root), **settings})
    compute = ALL[compute_of].compute
    assert compute is not None
    requests, _ = split_contribution(compute(FeatureContext(config, HOSTONLY)))
    return requests


def test_fstab_line_finds_the_last_usr_line() -> None:
    line = usr.fstab_line(FSTAB + "LABEL=usr2 /usr ext4 noatime 0 2\n", "/usr")
    assert line == usr.FstabLine("LABEL=usr2", "/usr", "ext4", "noatime")
    assert usr.fstab_line("# UUID=1 /usr ext4 defaults 0 2\n", "/usr") is None
    assert usr.fstab_line(FSTAB, "/srv") is None


def test_a_usr_line_in_the_fstab_switches_usr_on_in_hostonly_mode(root_tree: Path) -> None:
    assert _on(root_tree) == set()
    (root_tree / "etc/fstab").write_text(FSTAB)
    assert "usr" in _on(root_tree)
    # Generic images carry every filesystem's tools and mount mount.usr= as they are.
    assert "usr" not in _on(root_tree, detection=None)


def test_usr_brings_the_tools_of_its_filesystem_unless_configured(root_tree: Path) -> None:
    (root_tree / "etc/fstab").write_text(FSTAB)
    wanted = {(r.kind.value, r.name, r.optional) for r in _requests(root_tree, "usr")}
    assert wanted == {
        ("module", "xfs", True),
        ("executable", "fsck.xfs", True),
        ("executable", "mount.xfs", True),
    }
    assert _requests(root_tree, "usr", filesystems=["xfs"]) == []


def test_repart_definitions_switch_repart_on_and_bring_their_mkfs(root_tree: Path) -> None:
    assert "repart" not in _on(root_tree)
    definitions = root_tree / "usr/lib/repart.d"
    definitions.mkdir(parents=True)
    (definitions / "50-root.conf").write_text("[Partition]\nType=root\n")
    (definitions / "60-home.conf").write_text("[Partition]\nType=home\nFormat = btrfs\n")
    (definitions / "70-swap.conf").write_text("[Partition]\nType=swap\nFormat=swap\n")
    (definitions / "README").write_text("Format=vfat\n")  # not a .conf: not read
    assert repart.definitions(Sysroot(root_tree)) == [
        "/usr/lib/repart.d/50-root.conf",
        "/usr/lib/repart.d/60-home.conf",
        "/usr/lib/repart.d/70-swap.conf",
    ]
    assert "repart" in _on(root_tree)
    assert "repart" not in _on(root_tree, detection=None)
    assert [r.name for r in _requests(root_tree, "repart")] == ["mkfs.btrfs"]


def test_growfs_on_a_mount_of_the_initrd_switches_repart_on(root_tree: Path) -> None:
    # The root's and /home's growfs belong to the real root.
    assert not repart.grown_in_initrd(FSTAB)
    assert repart.grown_in_initrd("UUID=2 /usr ext4 ro,x-systemd.growfs 0 2\n")
    (root_tree / "etc/fstab").write_text("UUID=4 /var ext4 x-initrd.mount,x-systemd.growfs 0 2\n")
    assert "repart" in _on(root_tree)


def test_fsck_units_print_their_result_on_the_console(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree)})
    assert filesystems.FEATURE.compute is not None
    _, generated = split_contribution(filesystems.FEATURE.compute(FeatureContext(config)))
    dropins = {g.entry.path: g.entry.data for g in generated if isinstance(g, Generated)}
    for unit in ("systemd-fsck-root.service", "systemd-fsck@.service", "systemd-fsck-usr.service"):
        data = dropins[f"/etc/systemd/system/{unit}.d/bookend-console.conf"]
        assert data is not None and b"StandardOutput=journal+console" in data


def _first_partition_sectors(image: Path) -> int:
    """The size of the GPT's first entry (entries at LBA 2: type, uuid, first, last LBA)."""
    with image.open("rb") as disk:
        disk.seek(2 * 512 + 32)
        first, last = struct.unpack("<QQ", disk.read(16))
    return int(last) - int(first) + 1


def test_repart_grows_into_a_disk_bigger_than_its_image(tmp_path: Path) -> None:
    """An image written for 64 MiB on a 256 MiB disk: its GPT's backup header and last
    usable LBA sit at 64 MiB. systemd-repart opening the disk to write (libfdisk moves the
    backup header to the disk's end as it reads a writable disk) grows the partition
    into the whole disk; a dry run, opening it read-only, sees only the image's 64 MiB."""
    repart_tool = shutil.which("systemd-repart")
    if repart_tool is None:
        pytest.skip("systemd-repart is not installed (scripts/setup installs systemd)")
    image, made, grown = tmp_path / "disk.img", tmp_path / "made", tmp_path / "grown"
    for directory, size in ((made, "SizeMinBytes=16M\nSizeMaxBytes=16M\n"), (grown, "")):
        directory.mkdir()
        (directory / "10-root.conf").write_text(f"[Partition]\nType=root-x86-64\n{size}")

    def repart(definitions: Path, *args: str) -> None:
        argv = [repart_tool, "--no-pager", f"--definitions={definitions}", *args, str(image)]
        subprocess.run(argv, check=True, capture_output=True)

    repart(made, "--empty=create", "--size=64M", "--dry-run=no")
    with image.open("r+b") as disk:
        disk.truncate(256 * 2**20)
    assert gpt_ends(image) == (64 * 2048 - 1, 64 * 2048 - 34)
    assert _first_partition_sectors(image) == 16 * 2048
    repart(grown, "--dry-run=yes")
    assert gpt_ends(image) == (64 * 2048 - 1, 64 * 2048 - 34)
    repart(grown, "--dry-run=no")
    assert gpt_ends(image) == (256 * 2048 - 1, 256 * 2048 - 34)
    # Everything but the 1 MiB before the partition and the backup table after it.
    assert _first_partition_sectors(image) > 254 * 2048


def test_a_root_hash_on_the_command_line_names_verity() -> None:
    assert verity.names_verity("root=/dev/vda2 usrhash=00ff rw")
    assert verity.names_verity("roothash=00ff")
    assert verity.names_verity("systemd.verity_usr_data=/dev/vda1 quiet")
    assert not verity.names_verity("root=/dev/vda2 rw usr=x")
    assert not verity.names_verity("usrhash=00ff systemd.verity=0")


def _verity_on(root: Path, detection: HostDetection | None, **settings: object) -> bool:
    config = load_config(None, {"sysroot": str(root), **settings})
    return "verity" in switched_on(config, detection, ALL)


def test_verity_is_on_for_a_root_hash_hostonly_and_for_veritysetup_generic(
    root_tree: Path, tmp_path: Path
) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text("")
    (proc / "cmdline").write_text("root=UUID=1 rw\n")
    assert not _verity_on(root_tree, HOSTONLY, procfs=str(proc))
    # A UKI's command line is this machine's next one.
    assert _verity_on(root_tree, HOSTONLY, procfs=str(proc), uki=True, cmdline="usrhash=00ff")
    (proc / "cmdline").write_text("root=UUID=1 usrhash=00ff rw\n")
    assert _verity_on(root_tree, HOSTONLY, procfs=str(proc))
    # Generic: only a sysroot whose systemd can set verity up.
    assert not _verity_on(root_tree, None, mode="generic")
    helper = root_tree / verity.VERITYSETUP.lstrip("/")
    helper.parent.mkdir(parents=True, exist_ok=True)
    helper.write_text("")
    assert _verity_on(root_tree, None, mode="generic")


def test_verity_partitions_are_named_by_the_root_hash_halves() -> None:
    root_hash = "00112233445566778899aabbccddeeff" + "0123456789abcdef" * 2
    assert partition_uuids(root_hash) == (
        "00112233-4455-6677-8899-aabbccddeeff",
        "01234567-89ab-cdef-0123-456789abcdef",
    )
