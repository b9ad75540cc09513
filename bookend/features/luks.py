"""LUKS: systemd-cryptsetup and its generator, driven by crypttab and rd.luks.* options.

The image's /etc/crypttab holds only the sysroot's entries for the volumes the root and
/usr stand on (hostonly mode); never the whole file, which may name volumes and key
files the early boot has no business with. Key files go in only when asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.libsearch import LibrarySearch, loaded_by
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

# What dm-crypt asks for by crypto API name with cryptsetup's LUKS2 defaults
# (aes-xts-plain64, sha256), and the AF_ALG socket cryptsetup decrypts keyslots
# through. Optional by nature: the image's kernel may build them in. Hostonly detection
# brings them for every LUKS volume it finds, as the cipher itself is not in sysfs.
DEFAULT_CRYPTO = ("crypto-xts", "crypto-aes", "crypto-sha256", "algif_skcipher")

# In the initrd every volume is one the root or /usr needs: when unlocking it fails for
# good (tries= exhausted), waiting out the root device's timeout helps nobody.
GIVE_UP_DROPIN = "/etc/systemd/system/systemd-cryptsetup@.service.d/bookend-emergency.conf"
GIVE_UP = """\
# Written by bookend: a volume the root needs could not be unlocked; say so at once.
[Unit]
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly
"""


CRYPTSETUP = "/usr/lib/systemd/systemd-cryptsetup"
LIBCRYPTSETUP = "libcryptsetup.so.12"


def loaded_by_cryptsetup(sysroot: Sysroot, soname: str) -> str | None:
    """The path systemd-cryptsetup's loader opens for soname (a library it loads)."""
    return loaded_by(sysroot, CRYPTSETUP, soname)


def dlopened_libcryptsetup(context: FeatureContext) -> Contribution:
    """libcryptsetup, where systemd-cryptsetup loads it with dlopen() (systemd >= 254):
    systemd's .note.dlopen calls it only "suggested", which the closure leaves out,
    yet without it no volume opens. Where it is DT_NEEDED the ELF closure has it."""
    sysroot = Sysroot(context.config.sysroot)
    info = LibrarySearch(sysroot).info_if_elf(CRYPTSETUP) if sysroot.exists(CRYPTSETUP) else None
    if info is None or LIBCRYPTSETUP in info.needed:
        return []
    found = loaded_by_cryptsetup(sysroot, LIBCRYPTSETUP)
    reason = "feature luks: dlopened by systemd-cryptsetup"
    return [] if found is None else [Request(RequestKind.PATH, found, reason)]


def _keyfiles_give_up_and_crypttab(context: FeatureContext) -> Contribution:
    config = context.config
    origin = config.origins.get("keyfiles", "config")
    contribution: list[Request | Generated] = [
        Request(RequestKind.PATH, path, f"keyfiles ({origin}): embedded on request")
        for path in config.keyfiles
    ]
    entry = ArchiveEntry(GIVE_UP_DROPIN, EntryKind.FILE, 0o644, data=GIVE_UP.encode())
    contribution.append(Generated(entry, "feature luks: emergency mode when unlocking fails"))
    volumes = context.detection.crypt_volumes if context.detection else ()
    if volumes:
        contribution.append(_hostonly_crypttab(Sysroot(config.sysroot), volumes))
    return [*contribution, *dlopened_libcryptsetup(context)]


def _hostonly_crypttab(sysroot: Sysroot, volumes: tuple[str, ...]) -> Generated:
    """The image's crypttab: the sysroot's lines for the volumes / and /usr stand on."""
    crypttab = crypttab_for(sysroot.read_text("/etc/crypttab") or "", volumes)
    for volume in crypttab.missing:
        log.warning(
            "LUKS volume %s is under /, /usr or an active swap but not in %s; "
            "the kernel command line must name it (rd.luks.uuid=)",
            volume,
            sysroot.host_path("/etc/crypttab"),
        )
    entry = ArchiveEntry("/etc/crypttab", EntryKind.FILE, 0o644, data=crypttab.text.encode())
    return Generated(entry, "hostonly: crypttab entries of the volumes / and /usr need")


FEATURE = Feature(
    name="luks",
    help="unlock LUKS volumes: systemd-cryptsetup, crypttab entries for / and /usr, rd.luks.*",
    requires=("dm",),
    executables=(CRYPTSETUP, "?cryptsetup"),
    generators=("systemd-cryptsetup-generator",),
    units=(
        "cryptsetup.target",
        "cryptsetup-pre.target",
        "?remote-cryptsetup.target",
        "?system-systemd\\x2dcryptsetup.slice",
    ),
    modules=("dm_crypt", *(f"?{name}" for name in DEFAULT_CRYPTO)),
    # Whoever types the passphrase needs a keyboard that works this early.
    driver_classes=("keyboard",),
    # Tokens systemd-cryptenroll writes (TPM2, FIDO2, PKCS#11): the tpm2, fido2 and
    # pkcs11 features.
    compute=_keyfiles_give_up_and_crypttab,
    switch_on=SwitchOn(program=CRYPTSETUP),
    serves=StorageKind.LUKS,
    # No exitrd part: systemd-shutdown removes the crypt devices itself (DM ioctls).
)


@dataclass(frozen=True)
class Crypttab:
    text: str  # the image's /etc/crypttab
    missing: tuple[str, ...]  # volumes the sysroot's crypttab does not name


def crypttab_for(sysroot_crypttab: str, volumes: tuple[str, ...]) -> Crypttab:
    """Only the sysroot's crypttab lines whose volume name is among volumes."""
    lines = ["# Written by bookend: the sysroot's entries for the volumes / and /usr need."]
    named = set()
    for line in sysroot_crypttab.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0] in volumes:
            lines.append(line.strip())
            named.add(fields[0])
    missing = tuple(volume for volume in volumes if volume not in named)
    return Crypttab("\n".join(lines) + "\n", missing)
