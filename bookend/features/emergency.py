"""The emergency shell: sulogin, a shell, and who may use them."""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import HOOK_POINTS, Config, EmergencyAccess
from bookend.features.base import Contribution, Feature, FeatureContext, Generated
from bookend.features.hooks import POINT_ORDER, UNIT_DIR, wants_link

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


# A bare rd.break stops before switch-root, as dracut's does. systemd's
# ConditionKernelCommandLine=rd.break matches rd.break=POINT too, so this tells them apart
# (shell builtins only).
BARE_BREAK = """\
#!/bin/sh
# Written by bookend: exit 0 when the kernel command line has a bare rd.break.
set -f
read -r cmdline < /proc/cmdline
for word in $cmdline; do
    [ "$word" = rd.break ] && exit 0
done
exit 1
"""
BARE_BREAK_SCRIPT = "/usr/lib/bookend/rd-break-bare"
BARE_BREAK_UNIT = "bookend-break.service"
KMSG_LEVEL = 3  # err: printed on the console even with `quiet` (console loglevel 4)


def break_unit(point: str, access: EmergencyAccess, bare: bool = False) -> str:
    """The unit that stops the boot at point for a shell, when rd.break=point asks (or,
    bare, a plain rd.break).

    The shell is sulogin's, as in emergency mode: the emergency shell setting says who
    gets it (a locked image asks for Enter and goes on). It runs before the point's
    hooks, and the units ordered after the point wait until the shell is left. Only
    conditions on the command line decide, so no unit but the one asked for takes the
    console (the bare one runs its check alone: nothing else stops at its point)."""
    after, before = POINT_ORDER[point]
    # What systemd-sulogin-shell passes when SYSTEMD_SULOGIN_FORCE=1 (UNLOCK_DROPIN).
    force = " --force" if access is EmergencyAccess.UNLOCKED else ""
    if bare:
        asked = "ConditionKernelCommandLine=rd.break\n"
        check = f"ExecCondition=/bin/sh {BARE_BREAK_SCRIPT}\n"
        after = (*after, f"bookend-break-{point}.service")
        word = "rd.break"
    else:
        asked, check, word = (
            f"ConditionKernelCommandLine=rd.break={point}\n",
            "",
            f"rd.break={point}",
        )
    message = f"bookend: {word}: stopped; leave the shell (exit) to go on with the boot"
    # The line goes through the kernel's log, which writes to the console itself: one
    # echoed to the tty could still sit in its buffer when sulogin flushes a serial
    # line's queues (and systemd hangs the tty up before it), and was seen lost.
    return f"""\
# Written by bookend: {word} stops the boot here for a shell.
[Unit]
Description=bookend {word}
DefaultDependencies=no
ConditionPathExists=/etc/initrd-release
{asked}After={" ".join(after)}
Before={" ".join(before)} bookend-hook-{point}-1.service

[Service]
Type=oneshot
RemainAfterExit=yes
{check}ExecStartPre=-/bin/sh -c "echo '<{KMSG_LEVEL}>{message}' > /dev/kmsg"
ExecStart=-sulogin{force}
StandardInput=tty-force
StandardOutput=inherit
StandardError=inherit
TTYPath=/dev/console
TTYReset=yes
TTYVHangup=yes
KillMode=process
TimeoutStartSec=infinity
"""


def _break_units(config: Config) -> list[Generated]:
    reason = "feature emergency: rd.break stops the boot for a shell"
    script = ArchiveEntry(BARE_BREAK_SCRIPT, EntryKind.FILE, 0o755, data=BARE_BREAK.encode())
    entries = [Generated(script, reason)]
    units = [(f"bookend-break-{point}.service", point, False) for point in HOOK_POINTS]
    for name, point, bare in [*units, (BARE_BREAK_UNIT, "pre-pivot", True)]:
        text = break_unit(point, config.emergency_access, bare).encode()
        entry = ArchiveEntry(f"{UNIT_DIR}/{name}", EntryKind.FILE, 0o644, data=text)
        entries += [Generated(entry, reason), wants_link("initrd.target", "wants", name, reason)]
    return entries


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
    return entries + _break_units(config)


FEATURE = Feature(
    name="emergency",
    help="sulogin and /bin/sh for emergency and rescue mode and rd.break stops; root locked "
    "unless configured",
    executables=("sulogin", "/bin/sh"),
    compute=_accounts,
)
