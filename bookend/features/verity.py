"""dm-verity: a read-only root or /usr whose every block is checked against a root hash.

systemd does the work from the kernel command line: systemd-veritysetup-generator turns
`usrhash=` (or `roothash=`) into systemd-veritysetup@usr.service (@root), which opens
the data and hash devices as /dev/mapper/usr; where `systemd.verity_usr_data=` and
`systemd.verity_usr_hash=` do not name them, the partitions whose GPT UUIDs are the
hash's first and last 128 bits. The fstab generator then mounts /dev/mapper/usr at
/sysusr/usr (read-only) unless `mount.usr=` names another device. The image needs the
generator, systemd-veritysetup with libcryptsetup, dm-verity's module and the targets the
service orders itself by.

What switches it on: in hostonly mode a command line naming a root hash, this machine's
or the one configured for a UKI (a verity root or /usr is only set up from it); in
generic mode a sysroot whose systemd has veritysetup, as for LUKS, since a generic
image cannot know the command line it will be given.
"""

from __future__ import annotations

from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.luks import LIBCRYPTSETUP
from bookend.libsearch import LibrarySearch, loaded_by
from bookend.sysroot import Sysroot

VERITYSETUP = "/usr/lib/systemd/systemd-veritysetup"
# The generator's options that set up a verity device (systemd 252 and later).
HASH_OPTIONS = (
    "roothash=",
    "usrhash=",
    "systemd.verity_root_data=",
    "systemd.verity_usr_data=",
)


def names_verity(cmdline: str) -> bool:
    """A kernel command line asks for a verity root or /usr (and does not turn it off)."""
    words = cmdline.split()
    if "systemd.verity=0" in words or "systemd.verity=no" in words:
        return False
    return any(word.startswith(HASH_OPTIONS) for word in words)


def hostonly_wants_verity(context: FeatureContext) -> bool:
    """Hostonly: this machine's command line, or the UKI's, names a root hash."""
    if context.detection is None:
        return False
    return any(names_verity(line) for line in context.command_lines())


def _dlopened_libcryptsetup(context: FeatureContext) -> Contribution:
    """libcryptsetup where systemd-veritysetup dlopens it (systemd 254 and later), which
    the ELF closure does not follow; where it is DT_NEEDED (252) the closure has it."""
    sysroot = Sysroot(context.config.sysroot)
    if not sysroot.exists(VERITYSETUP):
        return []
    info = LibrarySearch(sysroot).info_if_elf(VERITYSETUP)
    if info is None or LIBCRYPTSETUP in info.needed:
        return []
    found = loaded_by(sysroot, VERITYSETUP, LIBCRYPTSETUP)
    reason = "feature verity: dlopened by systemd-veritysetup"
    return [] if found is None else [Request(RequestKind.PATH, found, reason)]


FEATURE = Feature(
    name="verity",
    help="a dm-verity root or /usr (roothash=, usrhash=): systemd-veritysetup and its generator",
    requires=("dm",),
    executables=(VERITYSETUP, "?veritysetup"),
    generators=("systemd-veritysetup-generator",),
    units=(
        "veritysetup.target",
        "veritysetup-pre.target",
        "?remote-veritysetup.target",
        "?system-systemd\\x2dveritysetup.slice",
    ),
    modules=("dm_verity",),
    compute=_dlopened_libcryptsetup,
    switch_on=SwitchOn(program=VERITYSETUP, detected=hostonly_wants_verity),
)
