"""Root storage daemons: started from the initrd, alive through switch-root, stopped by
the exitrd once nothing is mounted from the storage they serve.

systemd's ROOT_STORAGE_DAEMONS document asks three things of such a daemon, which a
drop-in written here gives the sysroot's unit without editing it:
- it is not stopped at switch-root (IgnoreOnIsolate=yes, no default dependencies,
  hence no Conflicts=shutdown.target either);
- it survives systemd-shutdown's final kill: SurviveFinalKillSignal=yes from systemd
  255 on, before that argv[0] starting with "@" (ExecStart=@PROGRAM @NAME ARGS...);
- it runs from the initrd's files, never the root it serves: it is started in the
  initrd, so its executable and libraries are the image's.
"""

from __future__ import annotations

import re

from bookend.archive import ArchiveEntry, EntryKind
from bookend.errors import ConfigError
from bookend.features.base import (
    Contribution,
    ExitrdPart,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.sysroot import Sysroot
from bookend.units import EXEC_PREFIX, find_unit, logical_lines

SURVIVE_FINAL_KILL_SINCE = 255
DROPIN_NAME = "bookend-storage-daemon.conf"
# Started while the initrd looks for the root, which may need them to appear at all.
WANTED_BY = "initrd-root-device.target"
SHARED_LIBRARY = re.compile(r"libsystemd-shared-(\d+)")


def systemd_version(sysroot: Sysroot) -> int | None:
    """The sysroot's systemd version, from the name of its shared library."""
    for pattern in ("/usr/lib/systemd/libsystemd-shared-*.so", "/usr/lib/*/systemd/*.so"):
        for path in sysroot.glob(pattern):
            match = SHARED_LIBRARY.search(path)
            if match:
                return int(match.group(1))
    return None


def at_argv0(exec_start: str) -> str:
    """An ExecStart= value with argv[0] made "@name", which systemd-shutdown spares."""
    prefix_match = EXEC_PREFIX.match(exec_start)
    prefix = prefix_match.group(0) if prefix_match else ""
    words = exec_start[len(prefix) :].split(maxsplit=1)
    if "@" in prefix or not words:
        return exec_start  # argv[0] is already the unit's choice
    program, rest = words[0], (words[1] if len(words) > 1 else "")
    argv0 = "@" + program.rsplit("/", 1)[-1]
    return f"@{prefix}{program} {argv0} {rest}".rstrip()


def daemon_dropin(unit_text: str, version: int | None) -> str:
    lines = [
        "# Written by bookend: a root storage daemon, kept running until the exitrd.",
        "[Unit]",
        "DefaultDependencies=no",
        "IgnoreOnIsolate=yes",
        f"Before={WANTED_BY}",
        "",
        "[Service]",
    ]
    if version is not None and version >= SURVIVE_FINAL_KILL_SINCE:
        return "\n".join([*lines, "SurviveFinalKillSignal=yes"]) + "\n"
    starts = [
        line.split("=", 1)[1].strip()
        for line in logical_lines(unit_text)
        if re.match(r"ExecStart\s*=", line)
    ]
    starts = [value for value in starts if value]
    lines.append("ExecStart=")  # replace the unit's own lines with the "@" forms
    lines += [f"ExecStart={at_argv0(value)}" for value in starts]
    return "\n".join(lines) + "\n"


# The real root's systemd reloads units from the root at switch-root and then isolates
# the default target: without this the daemon would be stopped right there. Installed
# by `bookend install-exitrd --storage-daemon UNIT`.
REAL_ROOT_DROPIN = """\
# Written by bookend install-exitrd: a root storage daemon, started in the initrd and
# stopped by the exitrd; the running system must not stop it (not even at shutdown).
[Unit]
DefaultDependencies=no
IgnoreOnIsolate=yes
"""


def _daemons(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    version = systemd_version(sysroot)
    origin = config.origins.get("storage_daemons", "config")
    contribution: list[Request | Generated] = []
    for unit in config.storage_daemons:
        path = find_unit(sysroot, unit)
        text = sysroot.read_text(path) if path else None
        if path is None or text is None:
            raise ConfigError(f"storage_daemons ({origin}): unit {unit} not found in the sysroot")
        reason = f"storage_daemons ({origin}): root storage daemon {unit}"
        dropin = f"/etc/systemd/system/{unit}.d/{DROPIN_NAME}"
        wants = f"/etc/systemd/system/{WANTED_BY}.wants/{unit}"
        contribution += [
            Request(RequestKind.UNIT, unit, reason),
            Generated(
                ArchiveEntry(
                    dropin, EntryKind.FILE, 0o644, data=daemon_dropin(text, version).encode()
                ),
                reason,
            ),
            Generated(ArchiveEntry(wants, EntryKind.SYMLINK, 0o777, target=path), reason),
        ]
    return contribution


# The exitrd's part: systemd-shutdown runs /usr/lib/systemd/system-shutdown/* after it
# has unmounted the old root and detached what it could. By then every process it did
# not kill is a storage daemon it spared for its "@"; stop them now, politely first.
STOP_HOOK = "/usr/lib/systemd/system-shutdown/bookend-storage-daemons"
STOP_SCRIPT = """\
#!/bin/sh
# Written by bookend: stop the root storage daemons systemd-shutdown spared.
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" -ne 1 ] && [ "$pid" -ne $$ ] && [ "$pid" -ne $PPID ] || continue
    argv0=
    IFS= read -r argv0 2>/dev/null < "$dir/cmdline"
    case "$argv0" in @*) ;; *) continue ;; esac
    IFS= read -r name 2>/dev/null < "$dir/comm" || name=$argv0
    echo "bookend: stopping root storage daemon $name (pid $pid)" > /dev/kmsg
    kill -TERM "$pid" 2>/dev/null || continue
    tries=0
    while [ "$tries" -lt 50 ] && read -r stat 2>/dev/null < "$dir/stat"; do
        case "$stat" in *") Z "*|*") X "*) break ;; esac  # exited, only not reaped
        tries=$((tries + 1))
        sleep 0.1
    done
    [ "$tries" -lt 50 ] || kill -KILL "$pid" 2>/dev/null
done
exit 0
"""


FEATURE = Feature(
    name="storage-daemons",
    help="root storage daemons (storage_daemons): run from the initrd until the exitrd",
    compute=_daemons,
    switch_on=SwitchOn(setting="storage_daemons"),
    exitrd=ExitrdPart(
        executables=("/bin/sh", "sleep"),
        files=(ArchiveEntry(STOP_HOOK, EntryKind.FILE, 0o755, data=STOP_SCRIPT.encode()),),
        purpose="stop the root storage daemons (storage_daemons)",
    ),
)
