"""The storage stacks are made, cached and readable from the host without device-mapper.

libcryptsetup reads a LUKS header and tries a key on a plain file, blkid probes
MD and btrfs members, and debugfs reads the ext4 inside an MD member at its data
offset: none of them needs the device-mapper the host kernel lacks. That the copied root
on them boots to multi-user is proven by every boot of a stack (test_storage.py,
test_exitrd_stacks.py), each reporting its token with no unit failed.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from bookend.proc import run
from harness.stackdisks import (
    BTRFS_ROOT_UUID,
    LUKS_UUID,
    LVM_LUKS_UUID,
    MD_UUID,
    PASSPHRASE,
    StackDisks,
)


def probe(disk: Path) -> dict[str, str]:
    """blkid's low-level probe of a disk image, as a dict."""
    output = run(["blkid", "-p", "-o", "export", disk]).stdout.decode()
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def unlocks(disk: Path, key_slot: int, *, passphrase: str | None = None,
            keyfile: Path | None = None) -> bool:  # fmt: skip
    """Whether the key opens that key slot: a header check that needs no device-mapper."""
    argv: list[str | Path] = ["cryptsetup", "open", "--test-passphrase", f"--key-slot={key_slot}"]
    argv += [f"--key-file={keyfile or '-'}", disk]
    try:
        run(argv, input_bytes=(passphrase or "").encode())
    except Exception:
        return False
    return True


def luks_dump(disk: Path) -> str:
    return run(["cryptsetup", "luksDump", disk]).stdout.decode()


def md_data_offset(member: Path) -> int:
    """Where the array's data starts on an MD member, in bytes."""
    examined = run(["mdadm", "--examine", member]).stdout.decode()
    found = re.search(r"Data Offset : (\d+) sectors", examined)
    assert found, examined
    return int(found.group(1)) * 512


def md_file(member: Path, path: str) -> str:
    """A file of the ext4 on an MD member, read by debugfs at the member's data offset."""
    # e2fsprogs takes I/O options after a "?" in the device name.
    device = f"{member}?offset={md_data_offset(member)}"
    return run(["debugfs", "-R", f"cat {path}", device]).stdout.decode()


def test_stacks_are_made_with_their_fixed_identities(stacks: dict[str, StackDisks]) -> None:
    assert set(stacks) == {"luks", "lvm-on-luks", "md-raid1", "btrfs-raid1"}
    for stack in stacks.values():
        for disk, size_mib in zip(stack.disks, stack.disk_mib, strict=True):
            assert disk.stat().st_size == size_mib * 2**20
        assert f"root=UUID={stack.root_uuid}" in stack.cmdline

    luks = stacks["luks"]
    assert probe(luks.disks[0])["UUID"] == LUKS_UUID == luks.luks_uuid
    dump = luks_dump(luks.disks[0])
    assert re.search(r"^\s+0: luks2$", dump, re.M) and re.search(r"^\s+1: luks2$", dump, re.M)
    assert "argon2id" in dump
    assert luks.keyfile is not None
    assert stat.S_IMODE(luks.keyfile.stat().st_mode) == 0o600
    assert luks.keyfile.stat().st_size == 64
    assert unlocks(luks.disks[0], 0, passphrase=PASSPHRASE)
    assert unlocks(luks.disks[0], 1, keyfile=luks.keyfile)
    assert not unlocks(luks.disks[0], 0, passphrase="wrong")

    lvm = stacks["lvm-on-luks"]
    assert probe(lvm.disks[0])["UUID"] == LVM_LUKS_UUID
    assert unlocks(lvm.disks[0], 0, passphrase=PASSPHRASE)
    assert lvm.keyfile is None

    md = stacks["md-raid1"]
    for member in md.disks:
        found = probe(member)
        assert (found["TYPE"], found["UUID"], found["LABEL"]) == (
            "linux_raid_member",
            MD_UUID,
            "any:root",
        )
    # Either half holds the whole root: a degraded boot finds it all.
    for member in md.disks:
        assert md_file(member, "/etc/fstab").splitlines()[-1] == md.fstab
        assert re.search(r"^ARRAY /dev/md/root .*name=any:root", md_file(
            member, "/etc/mdadm/mdadm.conf"), re.M)  # fmt: skip

    btrfs = stacks["btrfs-raid1"]
    members = [probe(disk) for disk in btrfs.disks]
    assert [(m["TYPE"], m["UUID"]) for m in members] == [("btrfs", BTRFS_ROOT_UUID)] * 2
    assert members[0]["UUID_SUB"] != members[1]["UUID_SUB"]
    assert "rootflags=subvol=@root" in btrfs.cmdline
