"""LUKS: systemd-cryptsetup and its generator, driven by crypttab and rd.luks.* options.

The image's /etc/crypttab holds only the sysroot's entries for the volumes the root and
/usr stand on (hostonly mode); never the whole file, which may name volumes and key
files the early boot has no business with. Key files go in only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.features.base import Contribution, Feature, Generated, Request, RequestKind

# libcryptsetup dlopens its token plugins (TPM2, FIDO2, PKCS#11) from here, and the
# plugins dlopen their own libraries; in systemd 252 neither carries a .note.dlopen.
TOKEN_PLUGIN_DIRS = (
    "?/usr/lib/x86_64-linux-gnu/cryptsetup",
    "?/usr/lib64/cryptsetup",
    "?/usr/lib/cryptsetup",
)
TOKEN_LIBRARIES = (
    "?/usr/lib/x86_64-linux-gnu/libtss2-esys.so.0",
    "?/usr/lib/x86_64-linux-gnu/libtss2-rc.so.0",
    "?/usr/lib/x86_64-linux-gnu/libtss2-mu.so.0",
    "?/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0",
    "?/usr/lib/x86_64-linux-gnu/libfido2.so.1",
    "?/usr/lib/x86_64-linux-gnu/libp11-kit.so.0",
)


# In the initrd every volume is one the root or /usr needs: when unlocking it fails for
# good (tries= exhausted), waiting out the root device's timeout helps nobody.
GIVE_UP_DROPIN = "/etc/systemd/system/systemd-cryptsetup@.service.d/bookend-emergency.conf"
GIVE_UP = """\
# Written by bookend: a volume the root needs could not be unlocked; say so at once.
[Unit]
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly
"""


def _keyfiles_and_give_up(config: Config) -> Contribution:
    origin = config.origins.get("keyfiles", "config")
    contribution: list[Request | Generated] = [
        Request(RequestKind.PATH, path, f"keyfiles ({origin}): embedded on request")
        for path in config.keyfiles
    ]
    entry = ArchiveEntry(GIVE_UP_DROPIN, EntryKind.FILE, 0o644, data=GIVE_UP.encode())
    contribution.append(Generated(entry, "feature luks: emergency mode when unlocking fails"))
    return contribution


FEATURE = Feature(
    name="luks",
    help="unlock LUKS volumes: systemd-cryptsetup, crypttab entries for / and /usr, rd.luks.*",
    requires=("dm",),
    executables=("/usr/lib/systemd/systemd-cryptsetup", "?cryptsetup"),
    generators=("systemd-cryptsetup-generator",),
    units=(
        "cryptsetup.target",
        "cryptsetup-pre.target",
        "?remote-cryptsetup.target",
        "?system-systemd\\x2dcryptsetup.slice",
    ),
    # The cipher modules dm-crypt asks for by crypto API name; built-in ones drop out.
    modules=("dm_crypt", "?crypto-xts", "?crypto-aes", "?crypto-sha256", "?algif_skcipher"),
    # Whoever types the passphrase needs a keyboard that works this early.
    driver_classes=("keyboard",),
    files=(*TOKEN_PLUGIN_DIRS, *TOKEN_LIBRARIES),
    compute=_keyfiles_and_give_up,
    storage="luks",
    program="/usr/lib/systemd/systemd-cryptsetup",
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
