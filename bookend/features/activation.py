"""Activation: a command of the real root, run inside it once /sysroot is complete.

Like NixOS' activation, the command belongs to the real root, not to the image: it
runs with /sysroot as its root directory after initrd-fs.target (so /sysroot/usr and
the x-initrd mounts are there too) and before initrd-cleanup.service switches root.
It runs at most once per boot. If it fails, the boot stops in emergency mode instead
of switching into a root that was not activated; its output is in the journal.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, Feature, FeatureContext, Generated, SwitchOn
from bookend.features.hooks import ACTIVATION_UNIT, UNIT_DIR, shell_exec_start, wants_link

UNIT = ACTIVATION_UNIT


def activation_unit(command: str) -> str:
    """The unit running command by the real root's /bin/sh inside /sysroot."""
    return f"""\
# Written by bookend: the configured activation command, run in the real root.
[Unit]
Description=Activation of the Real Root
# Every mount of the real root (initrd-fs.target comes after /sysroot) is in place.
After=initrd-root-fs.target initrd-fs.target
Before=initrd.target initrd-cleanup.service
ConditionPathExists=/etc/initrd-release
# A root that was not activated must not be entered.
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly

[Service]
Type=oneshot
# Once active the unit stays active, so nothing that pulls it in again re-runs it.
RemainAfterExit=yes
RootDirectory=/sysroot
# The real root sees the initrd's /proc, /sys and /dev, and the initrd's own /run,
# which systemd moves into the real root at switch-root, so what the command leaves
# in /run stays. Mounts it makes stay in its private namespace.
MountAPIVFS=yes
BindPaths=/run
# The command is the real root's, so the real root's shell runs it: the closure
# follows only /bin/sh (the image's own, which it holds anyway), never the command.
ExecStart={shell_exec_start(command)}
StandardOutput=journal+console
"""


# initrd-cleanup.service is queued (by initrd-parse-etc.service) before the
# activation runs, and After= alone lets it switch root once the activation has
# failed: its isolate stops emergency.target again (seen in a boot test). Requisite=
# makes its start fail instead, without starting the activation again.
CLEANUP_DROPIN = f"""\
# Written by bookend: switch root only into an activated root.
[Unit]
Requisite={UNIT}
After={UNIT}
"""


def _activation(context: FeatureContext) -> Contribution:
    config = context.config
    if config.activation is None:
        return []
    origin = config.origins.get("activation", "config")
    reason = f"feature activation: activation ({origin})"
    unit = activation_unit(config.activation).encode()
    dropin = CLEANUP_DROPIN.encode()
    return [
        Generated(ArchiveEntry(f"{UNIT_DIR}/{UNIT}", EntryKind.FILE, 0o644, data=unit), reason),
        # Required, not wanted: initrd.target fails (to emergency mode) with it.
        wants_link("initrd.target", "requires", UNIT, reason),
        Generated(
            ArchiveEntry(
                f"{UNIT_DIR}/initrd-cleanup.service.d/bookend-activation.conf",
                EntryKind.FILE,
                0o644,
                data=dropin,
            ),
            reason,
        ),
    ]


FEATURE = Feature(
    name="activation",
    help="run a command of the real root, inside /sysroot, before switch-root; "
    "failure means emergency mode",
    compute=_activation,
    switch_on=SwitchOn(settings=("activation",)),
)
