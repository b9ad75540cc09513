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
import stat

from bookend.archive import ArchiveEntry, EntryKind
from bookend.elf import read_elf
from bookend.errors import ElfError, SysrootError
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
SHARED_LIBRARY = re.compile(r"libsystemd-shared-(\d+)\.so")
# systemd's manager and the program the exitrd runs: both link libsystemd-shared-N.so.
VERSIONED_PROGRAMS = ("/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd-shutdown")


def systemd_version(sysroot: Sysroot) -> int | None:
    """The sysroot's systemd version, from the name of its private shared library.

    systemd's programs link libsystemd-shared-N.so wherever the distribution put it
    (Debian: /usr/lib/<multiarch>/systemd; Fedora, Arch: /usr/lib/systemd), so the
    programs' DT_NEEDED names it. A tree with no readable program (a test fixture)
    is looked at for the library itself in systemd's own directory.
    """
    for program in VERSIONED_PROGRAMS:
        resolved = sysroot.resolve(program)
        if resolved.st is None or not stat.S_ISREG(resolved.st.st_mode):
            continue
        try:
            needed = read_elf(sysroot.host_path(resolved.path)).needed
        except ElfError:
            continue
        for name in needed:
            match = SHARED_LIBRARY.fullmatch(name)
            if match:
                return int(match.group(1))
    for path in sysroot.glob("/usr/lib/systemd/libsystemd-shared-*.so"):
        match = SHARED_LIBRARY.fullmatch(path.rsplit("/", 1)[-1])
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


# Reads of a PID file not yet written before the announcement gives up (a few seconds
# under emulation; the shell has no sleep, the file comes within milliseconds).
PID_FILE_TRIES = 100000


def announce_start(name: str, pid_file: str | None = None) -> str:
    """An ExecStartPost= line that puts the daemon's PID on the console once it runs.

    The exitrd's stop hook names the PID it stops, so the console follows one daemon
    from the initrd to the exitrd (a restart would show a second PID). systemd gives
    ExecStartPost= the main PID in $MAINPID ("$$": the shell, not systemd, expands it);
    "-": a console that cannot be written never fails the daemon. A forking daemon's
    parent may exit before its child writes pid_file, and with an ExecStartPost=
    systemd does not wait for the file: $MAINPID is then empty and the file is read.
    """
    message = f"bookend: root storage daemon {name} runs as pid $$pid"
    wait = ""
    if pid_file is not None:
        wait = (
            f'while [ -z "$$pid" ] && [ $$tries -lt {PID_FILE_TRIES} ]; do '
            f"read -r pid 2>/dev/null < {pid_file}; tries=$$((tries + 1)); done; "
        )
    script = f'pid=$$MAINPID tries=0; {wait}echo "{message}" > /dev/kmsg'
    return f"ExecStartPost=-/bin/sh -c '{script}'"


def unit_pid_file(unit_text: str) -> str | None:
    """The unit's PIDFile=, if it names one."""
    for line in logical_lines(unit_text):
        key, _, value = line.partition("=")
        if key.strip() == "PIDFile" and value.strip():
            return value.strip()
    return None


def daemon_dropin(unit: str, unit_text: str, version: int | None) -> str:
    lines = [
        "# Written by bookend: a root storage daemon, kept running until the exitrd.",
        "[Unit]",
        "DefaultDependencies=no",
        "IgnoreOnIsolate=yes",
        f"Before={WANTED_BY}",
    ]
    name = unit.removesuffix(".service")
    service = ["", "[Service]", announce_start(name, unit_pid_file(unit_text))]
    if version is not None and version >= SURVIVE_FINAL_KILL_SINCE:
        # A [Unit] setting: systemd ignores it, with a warning, under [Service].
        return "\n".join([*lines, "SurviveFinalKillSignal=yes", *service]) + "\n"
    lines += service
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
# the default target: without this the daemon would be stopped right there. From 255
# on it also keeps SurviveFinalKillSignal=yes, the mark the initrd's copy of the unit
# gave the daemon's cgroup, in the running system's copy. Installed by
# `bookend install-exitrd --storage-daemon UNIT`.
REAL_ROOT_DROPIN = """\
# Written by bookend install-exitrd: a root storage daemon, started in the initrd and
# stopped by the exitrd; the running system must not stop it (not even at shutdown).
[Unit]
DefaultDependencies=no
IgnoreOnIsolate=yes
"""


def real_root_dropin(version: int | None) -> str:
    """The running system's drop-in for a root storage daemon, for its systemd version."""
    if version is not None and version >= SURVIVE_FINAL_KILL_SINCE:
        return REAL_ROOT_DROPIN + "SurviveFinalKillSignal=yes\n"
    return REAL_ROOT_DROPIN


def _daemons(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    version = systemd_version(sysroot)
    origin = config.origins.get("storage_daemons", "config")
    contribution: list[Request | Generated] = []
    for unit in config.storage_daemons:
        # resolve has checked that the unit exists; only reading it can still fail here.
        path = find_unit(sysroot, unit)
        text = sysroot.read_text(path) if path else None
        if path is None or text is None:
            raise SysrootError(f"storage_daemons ({origin}): cannot read unit {unit}")
        reason = f"storage_daemons ({origin}): root storage daemon {unit}"
        dropin = f"/etc/systemd/system/{unit}.d/{DROPIN_NAME}"
        wants = f"/etc/systemd/system/{WANTED_BY}.wants/{unit}"
        contribution += [
            Request(RequestKind.UNIT, unit, reason),
            Generated(
                ArchiveEntry(
                    dropin, EntryKind.FILE, 0o644, data=daemon_dropin(unit, text, version).encode()
                ),
                reason,
            ),
            Generated(ArchiveEntry(wants, EntryKind.SYMLINK, 0o777, target=path), reason),
        ]
    return contribution


# The exitrd's part: systemd-shutdown runs /usr/lib/systemd/system-shutdown/* (all at
# once) after it has unmounted the old root and detached what it could. By then every
# process it did not kill is a storage daemon it spared: one with an "@" argv[0]
# (systemd < 255) or one in a service cgroup marked SurviveFinalKillSignal=yes (>= 255;
# everything else in a service's cgroup was killed). Kernel threads sit in the root
# cgroup with no argv, and systemd-shutdown and this hook in init.scope: neither matches.
# One hook does both steps, in order: first the detach steps features leave in
# DETACH_DIR (disconnect NBD, log out of iSCSI), then the daemons.
STOP_HOOK = "/usr/lib/systemd/system-shutdown/bookend-storage-daemons"
DETACH_DIR = "/usr/lib/bookend/detach.d"
STOP_SCRIPT = """\
#!/bin/sh
# Written by bookend: detach the root's network storage, then stop the root storage
# daemons systemd-shutdown spared. "--list" prints their PIDs only; BOOKEND_PROC
# names another proc tree (for tests).
proc=${BOOKEND_PROC:-/proc}

is_spared_daemon() {  # $1: /proc/PID
    argv0=
    IFS= read -r argv0 2>/dev/null < "$1/cmdline" || [ -n "$argv0" ] || return 1
    case "$argv0" in @*) return 0 ;; esac
    while IFS= read -r line; do
        case "$line" in 0::*.service|*:name=systemd:*.service) return 0 ;; esac
    done 2>/dev/null < "$1/cgroup"
    return 1
}

spared_daemons() {
    for dir in "$proc"/[0-9]*; do
        pid=${dir##*/}
        [ "$pid" -ne 1 ] && [ "$pid" -ne $$ ] && [ "$pid" -ne "$PPID" ] || continue
        is_spared_daemon "$dir" && echo "$pid"
    done
}

stop_daemon() {  # $1: PID, politely first
    name=
    IFS= read -r name 2>/dev/null < "$proc/$1/comm" || name=$1
    echo "bookend: stopping root storage daemon $name (pid $1)" > /dev/kmsg
    kill -TERM "$1" 2>/dev/null || return 0
    tries=0
    while [ "$tries" -lt 50 ] && read -r stat 2>/dev/null < "$proc/$1/stat"; do
        case "$stat" in *") Z "*|*") X "*) return 0 ;; esac  # exited, only not reaped
        tries=$((tries + 1))
        sleep 0.1
    done
    [ "$tries" -lt 50 ] || kill -KILL "$1" 2>/dev/null
}

if [ "${1:-}" = --list ]; then
    spared_daemons
    exit 0
fi
for step in DETACH_DIR/*; do
    [ -x "$step" ] || continue
    echo "bookend: detaching root storage: $step" > /dev/kmsg
    "$step" || echo "bookend: $step failed" > /dev/kmsg
done
for pid in $(spared_daemons); do
    stop_daemon "$pid"
done
exit 0
""".replace("DETACH_DIR", DETACH_DIR)


FEATURE = Feature(
    name="storage-daemons",
    help="root storage daemons (storage_daemons): run from the initrd until the exitrd",
    executables=("/bin/sh",),  # the start announcement
    compute=_daemons,
    switch_on=SwitchOn(settings=("storage_daemons",)),
    exitrd=ExitrdPart(
        executables=("/bin/sh", "sleep"),
        files=(ArchiveEntry(STOP_HOOK, EntryKind.FILE, 0o755, data=STOP_SCRIPT.encode()),),
        purpose="stop the root storage daemons (storage_daemons)",
    ),
)
