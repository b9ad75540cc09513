"""Hooks: shell commands run at named points of the boot, each as its own unit.

There is no init script to hook into: systemd runs the boot, so each configured
(point, command) becomes a oneshot unit ordered at its point, run by the image's
/bin/sh. Hooks run in the order of the points, and in the configured order within a
point. A hook that fails is reported on the console and in the journal, and the
boot goes on, as dracut's hooks do; a hook that must stop the boot can start
emergency.target itself.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import HOOK_POINTS
from bookend.features.base import Contribution, Feature, FeatureContext, Generated, SwitchOn

UNIT_DIR = "/etc/systemd/system"
# The activation feature's unit (named here, which it imports from, to avoid a cycle):
# pre-pivot hooks see the activated root.
ACTIVATION_UNIT = "bookend-activation.service"

# Where each point sits in systemd's initrd boot: (after, before).
POINT_ORDER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # Both run before udev starts; cmdline first, by the chain between the hooks.
    # The journal's socket is there so their output is kept.
    "cmdline": (("systemd-journald.socket",), ("systemd-udevd.service",)),
    "pre-udev": (("systemd-journald.socket",), ("systemd-udevd.service",)),
    # udevd runs, but has not been asked to replay the devices the kernel found.
    "pre-trigger": (("systemd-udevd.service",), ("systemd-udev-trigger.service",)),
    # The root device is there, not yet checked or mounted.
    "pre-mount": (
        ("initrd-root-device.target",),
        ("systemd-fsck-root.service", "sysroot.mount"),
    ),
    # /sysroot is mounted; the real root's fstab has not been read yet.
    "mount": (("sysroot.mount",), ("initrd-root-fs.target",)),
    # Everything is mounted and activated; switch-root comes next.
    "pre-pivot": (
        ("initrd-fs.target", ACTIVATION_UNIT),
        ("initrd-cleanup.service",),
    ),
}


def unit_quoted(text: str) -> str:
    """text as one double-quoted word of an Exec*= line, passed on unchanged.

    systemd expands %-specifiers in the whole line and $VARIABLES in each word, then
    unquotes with C escapes; each is undone here, so the shell sees text as written.
    """
    escaped = []
    for char in text:
        if char in '\\"':
            escaped.append("\\" + char)
        elif char in "%$":
            escaped.append(char * 2)
        elif char == "\n":
            escaped.append("\\n")
        elif ord(char) < 0x20 or char == "\x7f":
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def shell_exec_start(command: str) -> str:
    """An ExecStart= value running command by /bin/sh.

    The closure follows only /bin/sh: the command's own words stay inside the quoted
    script, so a program it names is never looked up in the sysroot.
    """
    return f"/bin/sh -c {unit_quoted(command)}"


def wants_link(target: str, kind: str, unit: str, reason: str) -> Generated:
    """target.wants/unit (or .requires/): what [Install] would make, made at build time."""
    path = f"{UNIT_DIR}/{target}.{kind}/{unit}"
    return Generated(ArchiveEntry(path, EntryKind.SYMLINK, 0o777, target=f"../{unit}"), reason)


def hook_units(hooks: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(unit name, unit text) of every hook, in the order they run."""
    ordered = sorted(hooks, key=lambda hook: HOOK_POINTS.index(hook[0]))  # stable
    units: list[tuple[str, str]] = []
    counts = dict.fromkeys(HOOK_POINTS, 0)
    for point, command in ordered:
        counts[point] += 1
        name = f"bookend-hook-{point}-{counts[point]}.service"
        previous = units[-1][0] if units else None
        units.append((name, hook_unit(point, counts[point], command, previous)))
    return units


def hook_unit(point: str, number: int, command: str, previous: str | None) -> str:
    after, before = POINT_ORDER[point]
    # The chain keeps hooks in order where their points alone would not (two hooks
    # at one point, or cmdline and pre-udev).
    chain = f"After={previous}\n" if previous else ""
    return f"""\
# Written by bookend: hook {number} at {point}.
[Unit]
Description=bookend {point} hook {number}
# Early points come before sysinit.target; the ordering below is all there is.
DefaultDependencies=no
ConditionPathExists=/etc/initrd-release
After={" ".join(after)}
{chain}Before={" ".join(before)}

[Service]
Type=oneshot
# Once done, a hook stays done: nothing that pulls it in again re-runs it.
RemainAfterExit=yes
ExecStart={shell_exec_start(command)}
StandardOutput=journal+console
"""


def _hooks(context: FeatureContext) -> Contribution:
    config = context.config
    origin = config.origins.get("hooks", "config")
    entries: list[Generated] = []
    for name, text in hook_units(config.hooks):
        reason = f"feature hooks: hooks ({origin})"
        entry = ArchiveEntry(f"{UNIT_DIR}/{name}", EntryKind.FILE, 0o644, data=text.encode())
        entries.append(Generated(entry, reason))
        # initrd.target is what the initrd boots to, so its start pulls every hook in
        # at once, and the ordering above places each.
        entries.append(wants_link("initrd.target", "wants", name, reason))
    return entries


FEATURE = Feature(
    name="hooks",
    help="run configured shell commands at boot points (" + ", ".join(HOOK_POINTS) + ")",
    executables=("/bin/sh",),
    compute=_hooks,
    switch_on=SwitchOn(settings=("hooks",)),
)
