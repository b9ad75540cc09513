"""The exitrd's last word on the root's storage: what is still there, and what holds it.

systemd-shutdown, as the exitrd's /shutdown, unmounts /oldroot and detaches what it can
in a loop that gives up quietly when something stays busy (a process with a file open on
the old root, a DM device still open, an MD array still in use), then runs the exitrd's
shutdown hooks all at once and powers off. HOLDERS_HOOK is one of them: it waits, at
most WAIT_SECONDS, for the old root's mounts, the DM devices and the active MD arrays to
go (the other hooks stop arrays and daemons meanwhile), then says on the console either
that everything is detached, or what is left and what holds each: the processes with a
file, directory or mapped file on it, the devices stacked on it, where it is mounted.
Then it returns, so the power-off goes on: it never waits longer than its bound.
BOOKEND_PROC, BOOKEND_SYS, BOOKEND_DEV, BOOKEND_KMSG and BOOKEND_HOLD_WAIT name other
trees, another console file and another bound (for tests).
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import SHUTDOWN_HOOK_DIR

HOLDERS_HOOK = f"{SHUTDOWN_HOOK_DIR}/bookend-holders"
WAIT_SECONDS = 10
# The script uses the shell's builtins only, so the shell is all it brings (dash: 130 kB,
# about 50 kB of the image with xz); readlink and sleep cost 100 kB more and are not
# needed: fdinfo and maps name the mount of what a process holds, and the bounded wait
# reads /proc/uptime. A sysroot without /bin/sh (a minimal image) gets an exitrd whose
# hook cannot run, which only costs the report.
EXECUTABLES = ("?/bin/sh",)
# The hook's console line when nothing is left (`say` puts "bookend: " before it).
DETACHED = "old root unmounted, every DM and MD device detached"
ALL_DETACHED = f"bookend: {DETACHED}"

HOLDERS_SCRIPT = """\
#!/bin/sh
# Written by bookend: wait at most @WAIT@ s for the old root's storage to be detached, then
# name what is left and what holds it, and let the power-off go on. Shell builtins only:
# the exitrd has the shell and no other program for this.
proc=${BOOKEND_PROC:-/proc}
sys=${BOOKEND_SYS:-/sys}
devdir=${BOOKEND_DEV:-/dev}
kmsg=${BOOKEND_KMSG:-/dev/kmsg}
wait=${BOOKEND_HOLD_WAIT:-@WAIT@}

say() { echo "bookend: $*" >> "$kmsg"; }

left_mounts() {  # "MAJOR:MINOR POINT FSTYPE SOURCE" for each mount on or under /oldroot
    while IFS= read -r line; do
        set -f  # words from /proc are never patterns
        set -- $line
        set +f
        case $5 in /oldroot|/oldroot/*) ;; *) continue ;; esac
        devnum=$3 point=$5
        set -f
        set -- ${line#* - }
        set +f
        echo "$devnum $point $1 $2"
    done < "$proc/self/mountinfo"
}

left_dm() {  # each DM device left
    for dir in "$sys"/block/dm-*; do
        [ -e "$dir" ] && echo "${dir##*/}"
    done
}

left_md() {  # "mdN STATE" for each MD array still running
    for dir in "$sys"/block/md*; do
        state=
        read -r state 2>/dev/null < "$dir/md/array_state" || continue
        case $state in clear|inactive) continue ;; esac
        echo "${dir##*/} $state"
    done
}

dm_name() {  # $1: dm-N; its device-mapper name, or $1
    name=
    read -r name 2>/dev/null < "$sys/block/$1/dm/name" || name=$1
    echo "${name:-$1}"
}

stacked_on() {  # $1: a block device's name; what the kernel has stacked on it
    for holder in "$sys/block/$1"/holders/*; do
        [ -e "$holder" ] || continue
        holder=${holder##*/}
        case $holder in dm-*) echo "$holder ($(dm_name "$holder"))" ;; *) echo "$holder" ;; esac
    done
}

mounted_from() {  # $1: MAJOR:MINOR; where a file system on that device is mounted
    want=$1
    [ -n "$want" ] || return 0
    while IFS= read -r line; do
        set -f  # words from /proc are never patterns
        set -- $line
        set +f
        [ "$3" = "$want" ] && echo "$5"
    done < "$proc/self/mountinfo"
}

processes() {  # "PID COMM" for each process but this one, PID 1 and kernel threads
    for dir in "$proc"/[0-9]*; do
        pid=${dir##*/}
        [ "$pid" -ne $$ ] && [ "$pid" -ne 1 ] || continue
        argv0=
        IFS= read -r argv0 2>/dev/null < "$dir/cmdline" || [ -n "$argv0" ] || continue
        comm=
        read -r comm 2>/dev/null < "$dir/comm"
        # (The shell drops the NULs between the arguments: only argv[0]'s start is sure.)
        case $argv0 in @*) comm="$comm, a storage daemon: argv[0] starts with @" ;; esac
        echo "$pid $comm"
    done
}

mount_ids() {  # $1: /proc/PID, $2: MAJOR:MINOR; " ID ID " of that file system's mounts
    table=$1/mountinfo want=$2 ids=" "
    while IFS= read -r line; do
        set -f
        set -- $line
        set +f
        [ "$3" = "$want" ] && ids="$ids$1 "
    done 2>/dev/null < "$table"
    echo "$ids"
}

on_mount() {  # $1: PID, $2: MAJOR:MINOR, $3: mount point; the first use of that file system
    dir=$proc/$1 want=$2 point=$3
    # The file's mount, not its path: fdinfo's mnt_id (Linux 3.15) and ino (5.14).
    ids=$(mount_ids "$dir" "$want")
    for info in "$dir"/fdinfo/*; do
        mnt= ino=
        while read -r key value; do
            case $key in mnt_id:) mnt=$value ;; ino:) ino=$value ;; esac
        done 2>/dev/null < "$info"
        case $ids in *" $mnt "*) echo "fd ${info##*/} (inode $ino)"; return ;; esac
    done
    # The program and its libraries: maps names each mapped file and its file system.
    while read -r _ _ _ mapped _ path; do
        [ -n "$path" ] || continue
        major=$((0x${mapped%:*})) minor=$((0x${mapped#*:}))
        [ "$major:$minor" = "$want" ] && echo "maps $path" && return
    done 2>/dev/null < "$dir/maps"
    for link in cwd root; do
        place=$(cd -P "$dir/$link" 2>/dev/null && pwd -P) || continue
        case $place in "$point"|"$point"/*) echo "$link $place"; return ;; esac
    done
}

on_device() {  # $1: PID, $2: a device node; the process's first file descriptor on it
    for fd in "$proc/$1"/fd/*; do
        [ "$fd" -ef "$2" ] && echo "fd ${fd##*/} ($2)" && return
    done 2>/dev/null
}

name_holders() {
    left_mounts | while read -r devnum point fstype source; do
        say "still mounted: $point ($fstype from $source)"
        processes | while read -r pid comm; do
            found=$(on_mount "$pid" "$devnum" "$point")
            [ -z "$found" ] || say "  $point is held by pid $pid ($comm): $found"
        done
    done
    for dev in $(left_dm); do
        name=$(dm_name "$dev")
        say "still present: DM device $name ($dev)"
        describe "$dev"
    done
    left_md | while read -r dev state; do
        say "still running: MD array $dev ($state)"
        describe "$dev"
    done
}

describe() {  # $1: block device name
    dev=$1
    stacked_on "$dev" | while IFS= read -r holder; do
        say "  $dev is held by $holder"
    done
    devnum=
    read -r devnum 2>/dev/null < "$sys/block/$dev/dev"
    for point in $(mounted_from "$devnum"); do
        say "  $dev is mounted on $point"
    done
    processes | while read -r pid comm; do
        found=$(on_device "$pid" "$devdir/$dev")
        [ -z "$found" ] || say "  $dev is open in pid $pid ($comm): $found"
    done
}

left() { [ -n "$(left_mounts)$(left_dm)$(left_md)" ]; }

now() {  # hundredths of a second since boot in $up: the bound is in time, not rounds
    up=0.00
    read -r up _ 2>/dev/null < /proc/uptime
    up=${up%.*}${up#*.}
    up=${up#"${up%%[!0]*}"}  # no leading zeros: not octal
    up=${up:-0}
}

# No sleep(1): the loop asks again at once. It only runs while something is left, which
# is seldom, and then the other hooks need little CPU (mdadm --stop).
now
started=$up
while left; do
    now
    [ $((up - started)) -lt $((wait * 100)) ] || break
done
if ! left; then
    say "@DETACHED@"
    exit 0
fi
now
say "not detached after $(((up - started) / 100)) s; what holds it (power-off goes on):"
name_holders
exit 0
""".replace("@WAIT@", str(WAIT_SECONDS)).replace("@DETACHED@", DETACHED)


def holders_entry() -> ArchiveEntry:
    return ArchiveEntry(HOLDERS_HOOK, EntryKind.FILE, 0o755, data=HOLDERS_SCRIPT.encode())
