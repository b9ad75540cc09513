"""The emergency shell: sulogin, a shell, and who may use them."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, EmergencyAccess
from bookend.features.base import Contribution, Feature, FeatureContext, Generated

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"

# Groups udev's rules name; udevd warns for every rule naming an unknown group.
GROUPS = (
    ("root", 0),
    ("tty", 5),
    ("disk", 6),
    ("lp", 7),
    ("kmem", 15),
    ("dialout", 20),
    ("cdrom", 24),
    ("tape", 26),
    ("audio", 29),
    ("video", 44),
    ("utmp", 43),
    ("input", 101),
    ("kvm", 102),
    ("render", 103),
    ("sgx", 104),
    ("nogroup", 65534),
)

# sulogin refuses a locked root unless systemd's units ask it to force a shell.
UNLOCK_DROPIN = b"[Service]\nEnvironment=SYSTEMD_SULOGIN_FORCE=1\n"

# Before the shell (or the refusal), the console shows what went wrong in this boot, so
# a locked machine still tells its administrator which device or unit failed.
SHOW_ERRORS_DROPIN = (
    b"[Service]\n"
    b"ExecStartPre=-/usr/bin/journalctl --no-pager --boot --priority=err --output=short-monotonic\n"
)


def _shadow_line(config: Config) -> str:
    # "!*" cannot match any password, so a locked image opens no shell.
    password = {
        EmergencyAccess.LOCKED: "!*",
        EmergencyAccess.UNLOCKED: "!*",
        EmergencyAccess.PASSWORD: config.root_password_hash or "!*",
    }[config.emergency_access]
    return f"root:{password}:1::::::\n"


def _accounts(context: FeatureContext) -> Contribution:
    config = context.config
    reason = f"feature emergency: emergency shell {config.emergency_access.value}"
    group = "".join(f"{name}:x:{gid}:\n" for name, gid in GROUPS)
    entries = [
        Generated(ArchiveEntry("/etc/passwd", EntryKind.FILE, 0o644, data=PASSWD.encode()), reason),
        Generated(ArchiveEntry("/etc/group", EntryKind.FILE, 0o644, data=group.encode()), reason),
        Generated(
            ArchiveEntry("/etc/shadow", EntryKind.FILE, 0o400, data=_shadow_line(config).encode()),
            reason,
            # A password hash can be cracked offline: keep the image from other users.
            secret=config.emergency_access is EmergencyAccess.PASSWORD,
        ),
    ]
    for unit in ("emergency.service", "rescue.service"):
        path = f"/etc/systemd/system/{unit}.d/bookend-show-errors.conf"
        entries.append(
            Generated(
                ArchiveEntry(path, EntryKind.FILE, 0o644, data=SHOW_ERRORS_DROPIN),
                "feature emergency: show this boot's errors on the console",
            )
        )
    if config.emergency_access is EmergencyAccess.UNLOCKED:
        for unit in ("emergency.service", "rescue.service"):
            path = f"/etc/systemd/system/{unit}.d/bookend-unlocked.conf"
            entries.append(
                Generated(ArchiveEntry(path, EntryKind.FILE, 0o644, data=UNLOCK_DROPIN), reason)
            )
    return entries


FEATURE = Feature(
    name="emergency",
    help="sulogin and /bin/sh for emergency and rescue mode; root locked unless configured",
    executables=("sulogin", "/bin/sh"),
    compute=_accounts,
)
