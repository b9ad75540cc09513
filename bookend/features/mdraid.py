"""MD RAID: arrays assembled incrementally by udev with mdadm, degraded ones after a wait.

mdadm's udev rules add each member as it appears; when an array could start only
degraded, they pull in mdadm-last-resort@.timer, which starts it anyway after a while
instead of waiting forever for a disk that is gone.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import (
    SHUTDOWN_HOOK_DIR,
    Contribution,
    ExitrdPart,
    Feature,
    FeatureContext,
    Generated,
    SwitchOn,
)
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot

CONF_PATHS = ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf")
# What the early boot needs from mdadm.conf: which arrays and devices, and how to
# name them. Mail and monitoring settings are the running system's business.
ASSEMBLY_KEYWORDS = ("ARRAY", "DEVICE", "HOMEHOST", "AUTO", "CREATE", "POLICY")


def mdadm_conf(sysroot_conf: str | None) -> str:
    """The sysroot's assembly lines (its ARRAY lines make those arrays local), or none."""
    lines = ["# Written by bookend from the sysroot's mdadm.conf: assembly settings only."]
    keep = False
    for line in (sysroot_conf or "").splitlines():
        if line[:1].isspace():  # a continuation belongs to the line before
            if keep:
                lines.append(line.rstrip())
            continue
        words = line.split()
        keep = bool(words) and words[0].upper().startswith(
            tuple(k[:3] for k in ASSEMBLY_KEYWORDS)  # mdadm accepts 3-letter abbreviations
        )
        if keep:
            lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def _conf(context: FeatureContext) -> Contribution:
    sysroot = Sysroot(context.config.sysroot)
    found = next((sysroot.read_text(p) for p in CONF_PATHS if sysroot.exists(p)), None)
    entry = ArchiveEntry(
        "/etc/mdadm/mdadm.conf", EntryKind.FILE, 0o644, data=mdadm_conf(found).encode()
    )
    return [Generated(entry, "feature mdraid: mdadm.conf")]


# systemd-shutdown runs this in the exitrd with the other hooks (bookend.exitrd), after
# its loop has unmounted /oldroot and detached the DM devices. That loop stops MD arrays
# too since systemd 247 (with containers and partitions left out since 251), so on
# Debian 12 (252) this mostly finds none left; it stops what the loop left or what an
# older systemd-shutdown never tried, nothing held first. An array something still
# holds (a file system, a DM device on it) is left to bookend.holders to name.
# Stopping writes the superblocks clean, so the next assembly starts no resync.
STOP_HOOK = f"{SHUTDOWN_HOOK_DIR}/bookend-mdraid"
STOP_SCRIPT = """\
#!/bin/sh
# Written by bookend: stop the MD arrays nothing holds any more, arrays built on arrays
# from the top down.
round=0
while [ "$round" -lt 4 ]; do
    round=$((round + 1))
    stopped=
    for dir in /sys/block/md*; do
        state=
        read -r state 2>/dev/null < "$dir/md/array_state" || continue
        case $state in clear|inactive) continue ;; esac
        for holder in "$dir"/holders/*; do
            [ -e "$holder" ] && continue 2
        done
        dev=${dir##*/}
        if mdadm --stop "/dev/$dev" > /dev/null 2>&1; then
            echo "bookend: stopped MD array $dev (it was $state)" > /dev/kmsg
            stopped=yes
        else
            echo "bookend: cannot stop MD array $dev ($state)" > /dev/kmsg
        fi
    done
    [ -n "$stopped" ] || break
done
exit 0
"""


FEATURE = Feature(
    name="mdraid",
    help="MD RAID: mdadm, its udev rules, mdadm.conf; degraded arrays start after a timeout",
    executables=("mdadm", "?mdmon"),
    udev_rules=(
        "@md-arrays",
        "@md-assembly",
        "?01-md-raid-creating.rules",
    ),
    units=("mdadm-last-resort@.timer", "mdadm-last-resort@.service", "?mdmon@.service"),
    modules=("md_mod", "?raid0", "?raid1", "?raid10", "?raid456", "?linear"),
    compute=_conf,
    switch_on=SwitchOn(program="/sbin/mdadm"),
    serves=StorageKind.MDRAID,
    # The hook stops what systemd-shutdown's own loop left (see STOP_HOOK).
    exitrd=ExitrdPart(
        executables=("mdadm", "?mdmon", "/bin/sh"),
        files=(ArchiveEntry(STOP_HOOK, EntryKind.FILE, 0o755, data=STOP_SCRIPT.encode()),),
        purpose="stop the MD arrays (mdraid)",
    ),
)
