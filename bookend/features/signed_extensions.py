"""Signed Verity extension images, such as those systemd-stub hands to the initrd.

systemd-stub (252 and later) packs the *.raw files in the UKI's own directory on the
ESP (`\\EFI\\Linux\\NAME.efi.extra.d\\`) into the initrd as /.extra/sysext/, and (254
and later) *.confext.raw as /.extra/confext/. systemd-sysext and -confext in an initrd
look there from 254 on (252's search path ends at /var/lib/extensions), but take an
image from there only under a strict image policy, as the ESP is not trusted: a GPT
disk image whose root or /usr partition is Verity protected with a signed root hash
(src/sysext/sysext.c, pick_image_policy(): image_policy_sysext_strict). The signature
is checked by the kernel against its keyrings first, then by systemd itself against the
*.crt certificates in /etc/verity.d, /run/verity.d, /usr/local/lib/verity.d and
/usr/lib/verity.d (src/shared/dissect-image.c, validate_signature_userspace(); 257 skips
it with systemd.allow_userspace_verity=0 on the command line). One image refused fails
the whole merge (merge_subprocess() returns at the first error), so the signed images
beside it are not merged either.

So the image takes: dm-verity; libcryptsetup, which systemd dlopens to set up Verity
(its .note.dlopen calls it only "suggested", which the closure leaves out); libcrypto
for the signature (257's libsystemd-shared links it); device-mapper's udev rules (feature
dm), which make /dev/mapper's nodes and answer libdevmapper's udev cookies; the
sysroot's own certificate directories as they are; and verity_certificates, each as
/etc/verity.d/NAME.crt. The merge services come from feature extensions
(takes_stub_extensions).

On by itself for a UKI (the stub is what brings the images) when the sysroot's systemd
reads /.extra/sysext and the sysroot has libcryptsetup (else it could not merge them
anyway), and with verity_certificates or --add-feature signed-extensions, where a
sysroot without libcryptsetup stops the build with one line.
"""

from __future__ import annotations

from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.errors import SysrootError
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.features.storage_daemons import systemd_version
from bookend.libsearch import loaded_by
from bookend.signing import VERITY_DIR, verity_certificate_path
from bookend.sysroot import Sysroot
from bookend.units import find_unit

NAME = "signed-extensions"
# The first systemd whose systemd-sysext, in an initrd, looks in /.extra/sysext.
STUB_EXTENSIONS_SINCE = 254
SYSTEMD = "/usr/lib/systemd/systemd"
CRYPTSETUP = "libcryptsetup.so.12"
# Loaded before the merge service starts (feature extensions orders it after
# systemd-modules-load), so the first Verity table finds its target.
VERITY_MODULES_LOAD = "/etc/modules-load.d/bookend-signed-extensions.conf"
VERITY_MODULES = ("dm_mod", "dm_verity")
# The sysroot's own trusted certificates, where systemd reads them (/run's is made at
# run time).
SYSROOT_CERTIFICATE_DIRS = (VERITY_DIR, "/usr/lib/verity.d", "/usr/local/lib/verity.d")


def takes_stub_extensions(context: FeatureContext) -> bool:
    """The image merges signed extension images, those from systemd-stub among them."""
    config = context.config
    if config.verity_certificates or NAME in config.features:
        return True
    return config.uki and _stub_capable(Sysroot(config.sysroot))


def _stub_capable(sysroot: Sysroot) -> bool:
    """The sysroot's systemd-sysext reads /.extra/sysext and can set up Verity."""
    version = systemd_version(sysroot)
    return (
        version is not None
        and version >= STUB_EXTENSIONS_SINCE
        and find_unit(sysroot, "systemd-sysext.service") is not None
        and loaded_by(sysroot, SYSTEMD, CRYPTSETUP) is not None
    )


def _signed(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    reason = f"feature {NAME}: Verity and its signature for extension images"
    found = loaded_by(sysroot, SYSTEMD, CRYPTSETUP)
    if found is None:
        raise SysrootError(
            f"{NAME}: the sysroot has no {CRYPTSETUP}, which systemd loads to set up a "
            "Verity extension image (Debian: libcryptsetup12)"
        )
    items: list[Request | Generated] = [Request(RequestKind.PATH, found, reason)]
    items += [
        Request(RequestKind.PATH, directory, f"feature {NAME}: the sysroot's trusted certificates",
                optional=True)
        for directory in SYSROOT_CERTIFICATE_DIRS
    ]  # fmt: skip
    text = "".join(f"{name}\n" for name in VERITY_MODULES).encode()
    items.append(Generated(ArchiveEntry(VERITY_MODULES_LOAD, EntryKind.FILE, 0o644, data=text),
                           reason))  # fmt: skip
    for index, file in enumerate(config.verity_certificates):
        origin = config.origin_of("verity_certificates", index)
        entry = ArchiveEntry(verity_certificate_path(file), EntryKind.FILE, 0o644,
                             source=Path(file))  # fmt: skip
        items.append(Generated(entry, f"verity_certificates ({origin}): trusted {file}"))
    return items


FEATURE = Feature(
    name=NAME,
    help="signed Verity extension images, such as those systemd-stub brings from the ESP "
    "(/.extra/sysext): dm-verity, libcryptsetup and the trusted certificates "
    "(verity_certificates, the sysroot's verity.d); on for a UKI of systemd 254 or later",
    requires=("extensions", "dm"),
    modules=VERITY_MODULES,
    compute=_signed,
    switch_on=SwitchOn(settings=("verity_certificates",), detected=takes_stub_extensions),
)
