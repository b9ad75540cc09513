"""/etc/initrd-release: its presence is how systemd knows it runs in an initrd."""

from __future__ import annotations

from bookend import __version__
from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.errors import SysrootError
from bookend.features.base import Contribution, Feature, FeatureContext, Generated
from bookend.sysroot import Sysroot, parse_os_release


def initrd_release(os_release: dict[str, str], image: str = "initrd") -> bytes:
    """The OS's identity, marked as bookend's initrd (or exitrd) variant of it."""
    fields = dict(os_release)
    pretty = fields.get("PRETTY_NAME") or fields.get("NAME") or "Linux"
    fields["PRETTY_NAME"] = f"{pretty} (bookend {image})"
    fields["VARIANT"] = f"bookend {image}"
    fields["VARIANT_ID"] = f"bookend-{image}"
    fields["BOOKEND_VERSION"] = __version__
    return "".join(f'{key}="{value}"\n' for key, value in fields.items()).encode()


def release_files(config: Config, image: str = "initrd") -> Contribution:
    sysroot = Sysroot(config.sysroot)
    text = sysroot.read_text("/etc/os-release") or sysroot.read_text("/usr/lib/os-release")
    if text is None:
        raise SysrootError(f"{config.sysroot}: has neither /etc/os-release nor /usr/lib/os-release")
    reason = "feature release: systemd runs in initrd mode when /etc/initrd-release exists"
    return [
        Generated(
            ArchiveEntry(
                "/etc/initrd-release",
                EntryKind.FILE,
                0o644,
                data=initrd_release(parse_os_release(text), image),
            ),
            reason,
        ),
        Generated(
            ArchiveEntry("/etc/os-release", EntryKind.SYMLINK, 0o777, target="initrd-release"),
            reason,
        ),
    ]


def _initrd_release(context: FeatureContext) -> Contribution:
    return release_files(context.config)


FEATURE = Feature(
    name="release",
    help="/etc/initrd-release and /etc/os-release describing the initrd",
    compute=_initrd_release,
)
