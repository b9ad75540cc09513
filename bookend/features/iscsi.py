"""iSCSI roots: dracut's `netroot=iscsi:...` (one or more) and `rd.iscsi.firmware`, with
open-iscsi's iscsid as a root storage daemon and iscsiadm logging in.

The command line, as dracut.cmdline(7) writes it:
    netroot=iscsi:[USER:PASS[:RUSER:RPASS]@][SERVER]:[PROTOCOL]:[PORT][:[IFACE]:[NETDEV]]:[LUN]:TARGET
TARGET (iqn., eui. or naa.) may hold colons itself; `root=` names the filesystem on
the LUN (root=UUID=...), which udev makes appear once the session is up. Every LUN of
the target is scanned; the LUN field is read but selects nothing.

A generator shipped in the image writes, with no loop waiting for anything:
- `bookend-iscsid.service`: iscsid, a root storage daemon ("@" argv[0] before systemd
  255, SurviveFinalKillSignal=yes from 255; no default dependencies, IgnoreOnIsolate=yes),
  written to /run/systemd/system so the real root keeps it (as nbd does). Once iscsid
  runs, the console says "bookend: root storage daemon iscsid runs as pid N". The real
  root's own iscsid.service and iscsid.socket (open-iscsi's) are masked there for the
  boot: there is one iscsid a system. Its initiator
  name: rd.iscsi.initiator=, else the image's /etc/iscsi/initiatorname.iscsi (hostonly
  images carry the sysroot's, so a target's ACL knows this machine), else one made at
  boot by iscsi-iname (new every boot: a target with ACLs needs one of the first two).
- `bookend-iscsi-login-N.service` per netroot=iscsi: (and `bookend-iscsi-firmware.service`
  for iBFT: `iscsiadm -m fw -l`): iscsiadm creates the node and logs in, after
  network-online.target and iscsid, before initrd-root-device.target.
CHAP credentials come only from the command line (written into the login unit, mode
0600) or from `iscsi_config`, an iscsid.conf the user names, embedded as the image's
/etc/iscsi/iscsid.conf and marked secret (the image is then written 0600). The host's
own iscsid.conf and node records are never taken otherwise (bookend.secrets).
The exitrd logs out of every session once the old root is unmounted (a detach step),
then the storage-daemons hook stops iscsid.
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, ModuleMode
from bookend.errors import ConfigError
from bookend.features.base import (
    Contribution,
    ExitrdPart,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
)
from bookend.features.storage_daemons import (
    DETACH_DIR,
    SURVIVE_FINAL_KILL_SINCE,
    announce_start,
    systemd_version,
)
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot

GENERATOR = "/usr/lib/systemd/system-generators/bookend-iscsi-generator"
DETACH_STEP = f"{DETACH_DIR}/50-iscsi"
DAEMON_UNIT = "bookend-iscsid.service"
LOGIN_UNIT = "bookend-iscsi-login-{n}.service"
FIRMWARE_UNIT = "bookend-iscsi-firmware.service"
FILES_UNIT = "bookend-iscsid-files.service"
INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
CONFIG_FILE = "/etc/iscsi/iscsid.conf"
# Where iscsid (forking) writes its PID, its default.
PID_FILE = "/run/iscsid.pid"
# Where iscsiadm keeps its node records, which it does not make itself: /etc/iscsi up
# to open-iscsi 2.1.9 (Debian 12), /var/lib/iscsi from then on (Debian 13, Fedora).
# The package makes the directory, so the sysroot shows which one its iscsiadm uses.
RECORD_DIRS = ("/etc/iscsi", "/var/lib/iscsi")
DAEMON_PATHS = ("/usr/sbin/iscsid", "/sbin/iscsid")
ADMIN_PATHS = ("/usr/sbin/iscsiadm", "/sbin/iscsiadm", "/usr/bin/iscsiadm")
# open-iscsi's own units, as the real root may have them: masked there for the boot.
REAL_ROOT_UNITS = ("iscsid.service", "iscsid.socket")

GENERATOR_TEMPLATE = r"""#!/bin/sh
# Written by bookend: netroot=iscsi:... (any number) and rd.iscsi.firmware become
# @DAEMON_UNIT@ and one login unit per target. BOOKEND_CMDLINE, BOOKEND_UNIT_DIR,
# BOOKEND_RUN_DIR, BOOKEND_LOCK_DIR, BOOKEND_INITIATOR_FILE and BOOKEND_KMSG name other
# files (for tests).
set -f
normal=${1:?usage: $0 NORMAL_DIR EARLY_DIR LATE_DIR}
unitdir=${BOOKEND_UNIT_DIR:-/run/systemd/system}
rundir=${BOOKEND_RUN_DIR:-/run/bookend/iscsi}
lockdir=${BOOKEND_LOCK_DIR:-/run/lock/iscsi}  # iscsiadm makes only its last part
initiator_file=${BOOKEND_INITIATOR_FILE:-@INITIATOR_FILE@}
kmsg=${BOOKEND_KMSG:-/dev/kmsg}
wants="$normal/initrd-root-device.target.wants"
cmdline=
IFS= read -r cmdline < "${BOOKEND_CMDLINE:-/proc/cmdline}" || [ -n "$cmdline" ] || exit 0

say() { echo "<$1>bookend-iscsi-generator: $2" > "$kmsg"; }
line() { printf '%s\n' "$1"; }

# One word of an ExecStart= line: quoted, with systemd's specifiers and variables
# (% and $) doubled, so a password is passed as written.
quote() {
    rest=$1 out=
    while [ -n "$rest" ]; do
        char=${rest%"${rest#?}"}
        rest=${rest#?}
        case "$char" in
            \\|\") out="$out\\$char" ;;
            %) out="$out%%" ;;
            \$) out="$out\$\$" ;;
            *) out="$out$char" ;;
        esac
    done
    printf '"%s"' "$out"
}

is_target_name() { case "$1" in iqn.*|eui.*|naa.*) return 0 ;; esac; return 1; }

# Sets user pass ruser rpass server protocol port lun target from one spec
# ([USER:PASS[:RUSER:RPASS]@][SERVER]:[PROTOCOL]:[PORT][:[IFACE]:[NETDEV]]:[LUN]:TARGET).
parse_spec() {
    spec_left=$1 user= pass= ruser= rpass= server= protocol= port= lun= target=
    case "$spec_left" in
        *@*) IFS=:; set -- ${spec_left%@*}; unset IFS
             user=${1:-} pass=${2:-} ruser=${3:-} rpass=${4:-}
             spec_left=${spec_left##*@} ;;
    esac
    case "$spec_left" in
        \[*) server=${spec_left%%]*}; server=${server#\[}; spec_left=${spec_left#*]} ;;
        *) server=${spec_left%%:*}; spec_left=${spec_left#"$server"} ;;
    esac
    IFS=:; set -- ${spec_left#:}; unset IFS
    protocol=${1:-} port=${2:-}
    [ $# -ge 2 ] && shift 2 || set --
    if [ $# -ge 1 ] && is_target_name "$1"; then
        :  # no LUN field at all (a LUN is a number, never a target name)
    elif [ $# -ge 2 ] && is_target_name "$2"; then
        lun=$1; shift 1
    elif [ $# -ge 4 ] && is_target_name "$4"; then
        [ -z "$1$2" ] || say 4 "ignoring IFACE '$1' and NETDEV '$2' of iscsi:$server"
        lun=$3; shift 3
    else
        return 1
    fi
    target=$1; shift
    for part in "$@"; do target="$target:$part"; done
    port=${port:-3260} lun=${lun:-0}
    case "$protocol" in ''|6) ;; *) say 4 "protocol '$protocol' is not TCP (6): using TCP" ;; esac
    [ -n "$server" ]
}

unit_header() {  # $1: description, $2: units wanted before it besides the network
    cat <<EOF
# Written by bookend-iscsi-generator from the kernel command line.
[Unit]
Description=$1
Documentation=man:iscsiadm(8)
DefaultDependencies=no
IgnoreOnIsolate=yes
Requires=@DAEMON_UNIT@
Wants=network-online.target${2:+ $2}
After=network-online.target @DAEMON_UNIT@${2:+ $2}
Before=initrd-root-device.target

[Service]
Type=oneshot
RemainAfterExit=yes
EOF
}

auth() { line "ExecStart=$node -o update -n node.session.auth.$1 -v $2"; }

write_login_unit() {  # $1: number; the parse_spec variables
    case "$server" in *:*) portal="[$server]:$port" ;; *) portal="$server:$port" ;; esac
    node="@ISCSIADM@ -m node -T $(quote "$target") -p $(quote "$portal")"
    unit="$unitdir/bookend-iscsi-login-$1.service"
    (
        umask 077  # CHAP passwords from the command line: readable by root only
        unit_header "iSCSI login to $target at $portal (LUN $lun)" > "$unit"
        {  # printf, not echo: dash's echo would read the backslashes quote() wrote
            line "ExecStart=$node -o new"
            if [ -n "$user" ]; then
                auth authmethod CHAP
                auth username "$(quote "$user")"
                auth password "$(quote "$pass")"
            fi
            if [ -n "$ruser" ]; then
                auth username_in "$(quote "$ruser")"
                auth password_in "$(quote "$rpass")"
            fi
            line "ExecStart=$node --login"
        } >> "$unit"
    )
    ln -sf "$unit" "$wants/${unit##*/}"
}

write_firmware_unit() {
    unit="$unitdir/@FIRMWARE_UNIT@"
    {
        unit_header "iSCSI login to the targets the firmware names (iBFT)" \
            modprobe@iscsi_ibft.service
        echo "ExecStart=@ISCSIADM@ -m fw -l"
    } > "$unit"
    ln -sf "$unit" "$wants/@FIRMWARE_UNIT@"
}

write_daemon_unit() {  # $1: initiator name file
    cat > "$unitdir/@DAEMON_UNIT@" <<EOF
# Written by bookend-iscsi-generator: a root storage daemon, kept running through
# switch-root until the exitrd has logged out of its sessions.
[Unit]
Description=iSCSI initiator daemon for the root (iscsid)
Documentation=man:iscsid(8)
DefaultDependencies=no
IgnoreOnIsolate=yes
@SURVIVE@
Wants=modprobe@iscsi_tcp.service
After=modprobe@iscsi_tcp.service
Before=initrd-root-device.target

[Service]
Type=forking
PIDFile=@PID_FILE@
ExecStart=@EXEC@ -i $1
@ANNOUNCE@
EOF
}

# For the real root (skipped in the initrd): give iscsid back the files it needs, with
# the real root's own shell, mkdir and mount; the script waits in /run, which it keeps.
write_files_unit() {
    cat > "$rundir/give-iscsid-files" <<'EOF'
@GIVE_BACK@EOF
    cat > "$unitdir/@FILES_UNIT@" <<EOF
# Written by bookend-iscsi-generator: after switch-root, iscsid's root (the initrd's)
# is empty; this gives it the files it needs to take requests.
[Unit]
Description=Give the initrd's iscsid /sys, /proc and /etc/passwd in its old root
DefaultDependencies=no
ConditionPathExists=!/etc/initrd-release
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh $rundir/give-iscsid-files
EOF
    mkdir -p "$unitdir/sysinit.target.wants"
    ln -sf "../@FILES_UNIT@" "$unitdir/sysinit.target.wants/@FILES_UNIT@"
}

initiator= firmware= count=0 specs=
for word in $cmdline; do
    case "$word" in
        netroot=iscsi:*) specs="$specs ${word#netroot=iscsi:}" ;;
        rd.iscsi.firmware|rd.iscsi.firmware=1|rd.iscsi.ibft|rd.iscsi.ibft=1) firmware=1 ;;
        rd.iscsi.firmware=0|rd.iscsi.ibft=0) firmware= ;;
        rd.iscsi.initiator=*) initiator=${word#rd.iscsi.initiator=} ;;
    esac
done
[ -n "$specs$firmware" ] || exit 0

mkdir -p "$unitdir" "$wants" "$rundir" "$lockdir"
for spec in $specs; do
    if ! parse_spec "$spec"; then
        say 3 "no server or target name in netroot=iscsi:$spec"
        continue
    fi
    count=$((count + 1))
    write_login_unit "$count"
done
[ -z "$firmware" ] || write_firmware_unit
[ "$count" -gt 0 ] || [ -n "$firmware" ] || exit 0

if [ -n "$initiator" ]; then
    initiator_file="$rundir/initiatorname.iscsi"
    echo "InitiatorName=$initiator" > "$initiator_file"
elif [ ! -s "$initiator_file" ]; then
    initiator_file="$rundir/initiatorname.iscsi"
    echo "InitiatorName=$(@INAME@)" > "$initiator_file"
fi
write_daemon_unit "$initiator_file"
ln -sf "$unitdir/@DAEMON_UNIT@" "$wants/@DAEMON_UNIT@"
# One iscsid a system: the kernel's iSCSI netlink socket and iscsiadm's abstract socket
# take one listener each. The real root's own iscsid units (open-iscsi's) are masked
# for this boot, in /run, which it keeps; its iscsiadm talks to this daemon instead.
for unit in @REAL_ROOT_UNITS@; do
    ln -sf /dev/null "$unitdir/$unit"
done
write_files_unit
exit 0
"""

# The files iscsid needs once switch-root has emptied the initrd's root it still runs
# in (and moved its /sys and /proc away): to log out or take any request, iscsid reads
# sysfs and looks the asking user up in /etc/passwd (only root may ask). Run in the
# real root right after switch-root, and again in the exitrd (a no-op by then).
GIVE_BACK_TEMPLATE = """\
for comm in /proc/[0-9]*/comm; do
    read -r name 2>/dev/null < "$comm" && [ "$name" = iscsid ] || continue
    root=${comm%/comm}/root
    [ ! -d "$root/sys/class" ] || [ ! -s "$root/etc/passwd" ] || continue
    pid=${comm%/comm}
    echo "bookend: giving iscsid (pid ${pid#/proc/}) /sys, /proc, /etc/passwd again" > /dev/kmsg
    @MKDIR@ -p "$root/sys" "$root/proc" "$root/etc" > /dev/kmsg 2>&1
    # --no-canonicalize: the path as given, not the /sys it reads back as
    [ -d "$root/sys/class" ] || @MOUNT@ -c -t sysfs sysfs "$root/sys" > /dev/kmsg 2>&1
    [ -d "$root/proc/self" ] || @MOUNT@ -c -t proc proc "$root/proc" > /dev/kmsg 2>&1
    [ -s "$root/etc/passwd" ] || echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
done
"""

DETACH_TEMPLATE = """\
#!/bin/sh
# Written by bookend: log out of every iSCSI session; systemd-shutdown has unmounted
# the old root by now (the message says whether /oldroot is really gone).
oldroot="unmounted"
while read -r _ point _; do
    [ "$point" = /oldroot ] && oldroot="STILL MOUNTED"
done < /proc/mounts

@GIVE_BACK@
for session in /sys/class/iscsi_session/session*; do
    [ -e "$session/targetname" ] || continue
    target=
    read -r target < "$session/targetname"
    echo "bookend: logging out of iSCSI ${session##*/} to $target (/oldroot $oldroot)" > /dev/kmsg
    @ISCSIADM@ -m session -r "${session##*/session}" -u 2>&1
done
"""


def sysroot_program(sysroot: Sysroot, candidates: tuple[str, ...], what: str) -> str:
    found = next((path for path in candidates if sysroot.exists(path)), None)
    if found is None:
        raise ConfigError(f"feature iscsi: the sysroot has no {what} ({', '.join(candidates)})")
    return found


def generator_script(iscsid: str, iscsiadm: str, iname: str, systemd: int | None) -> str:
    """The generator, for the sysroot's open-iscsi programs and systemd version."""
    if systemd is not None and systemd >= SURVIVE_FINAL_KILL_SINCE:
        exec_start, survive = iscsid, "SurviveFinalKillSignal=yes"
    else:  # argv[0] "@iscsid": systemd-shutdown spares it
        exec_start, survive = f"@{iscsid} @iscsid", ""
    replacements = {
        "@EXEC@": exec_start,
        "@PID_FILE@": PID_FILE,
        "@SURVIVE@": survive,
        # In the generator's here-document, where "$" must be escaped to stay itself.
        "@ANNOUNCE@": announce_start("iscsid", PID_FILE).replace("$", "\\$"),
        "@ISCSIADM@": iscsiadm,
        "@INAME@": iname,
        "@DAEMON_UNIT@": DAEMON_UNIT,
        "@FIRMWARE_UNIT@": FIRMWARE_UNIT,
        "@INITIATOR_FILE@": INITIATOR_FILE,
        "@FILES_UNIT@": FILES_UNIT,
        "@REAL_ROOT_UNITS@": " ".join(REAL_ROOT_UNITS),
        "@GIVE_BACK@": GIVE_BACK_TEMPLATE.replace("@MKDIR@", "mkdir").replace("@MOUNT@", "mount"),
    }
    text = GENERATOR_TEMPLATE
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    return text


def _programs(sysroot: Sysroot) -> tuple[str, str, str]:
    iscsid = sysroot_program(sysroot, DAEMON_PATHS, "iscsid")
    iscsiadm = sysroot_program(sysroot, ADMIN_PATHS, "iscsiadm")
    iname = iscsid.rsplit("/", 1)[0] + "/iscsi-iname"
    return iscsid, iscsiadm, iname


def _generator(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    iscsid, iscsiadm, iname = _programs(sysroot)
    script = generator_script(iscsid, iscsiadm, iname, systemd_version(sysroot))
    entry = ArchiveEntry(GENERATOR, EntryKind.FILE, 0o755, data=script.encode())
    contribution: list[Request | Generated] = [
        Generated(entry, "feature iscsi: netroot=iscsi:... into units"),
        *_record_dirs(sysroot),
        Request(RequestKind.EXECUTABLE, iscsid, "feature iscsi: the root storage daemon"),
        Request(RequestKind.EXECUTABLE, iscsiadm, "feature iscsi: logs in to the targets"),
        Request(RequestKind.EXECUTABLE, iname, "feature iscsi: an initiator name", True),
    ]
    if config.mode is ModuleMode.HOSTONLY and sysroot.exists(INITIATOR_FILE):
        reason = "feature iscsi (hostonly): the sysroot's initiator name"
        contribution.append(Request(RequestKind.PATH, INITIATOR_FILE, reason))
    if config.iscsi_config is not None:
        contribution.append(_embedded_config(sysroot, config))
    return contribution


def _record_dirs(sysroot: Sysroot) -> list[Generated]:
    """Empty directories for iscsiadm's node records, where the sysroot has them."""
    found = [path for path in RECORD_DIRS if sysroot.is_dir(path)] or [RECORD_DIRS[0]]
    reason = "feature iscsi: where iscsiadm keeps node records"
    return [Generated(ArchiveEntry(path, EntryKind.DIRECTORY, 0o755), reason) for path in found]


def _embedded_config(sysroot: Sysroot, config: Config) -> Generated:
    """The iscsid.conf the user named (CHAP credentials): the image becomes secret."""
    assert config.iscsi_config is not None
    origin = config.origins.get("iscsi_config", "config")
    text = sysroot.read_text(config.iscsi_config)
    if text is None:
        raise ConfigError(f"iscsi_config ({origin}): cannot read {config.iscsi_config}")
    entry = ArchiveEntry(CONFIG_FILE, EntryKind.FILE, 0o600, data=text.encode())
    reason = f"iscsi_config ({origin}): {config.iscsi_config}, may hold CHAP secrets"
    return Generated(entry, reason, secret=True)


def _exitrd(context: FeatureContext) -> Contribution:
    """The exitrd's part: iscsiadm, its record directory (it gives up on any request
    without one) and the step that logs out of every session."""
    sysroot = Sysroot(context.config.sysroot)
    iscsiadm = sysroot_program(sysroot, ADMIN_PATHS, "iscsiadm")
    mkdir = sysroot_program(sysroot, ("/usr/bin/mkdir", "/bin/mkdir"), "mkdir")
    mount = sysroot_program(sysroot, ("/usr/bin/mount", "/bin/mount"), "mount")
    script = detach_script(iscsiadm, mkdir, mount).encode()
    reason = "feature iscsi: log out of iSCSI sessions after the old root is unmounted"
    return [
        Generated(ArchiveEntry(DETACH_STEP, EntryKind.FILE, 0o755, data=script), reason),
        *_record_dirs(sysroot),
        *(Request(RequestKind.EXECUTABLE, path, reason) for path in (iscsiadm, mkdir, mount)),
    ]


def detach_script(iscsiadm: str, mkdir: str, mount: str) -> str:
    text = DETACH_TEMPLATE.replace("@GIVE_BACK@", GIVE_BACK_TEMPLATE)
    text = text.replace("@ISCSIADM@", iscsiadm)
    return text.replace("@MKDIR@", mkdir).replace("@MOUNT@", mount)


FEATURE = Feature(
    name="iscsi",
    help="netroot=iscsi:...: iscsid as a root storage daemon, iscsiadm logs in",
    # storage-daemons: its exitrd hook runs the logout step, then stops iscsid.
    requires=("network", "storage-daemons"),
    executables=("/bin/sh", "mkdir", "ln", "cat"),
    units=("?modprobe@.service",),
    modules=("iscsi_tcp", "sd_mod", "crc32c", "?iscsi_ibft"),
    compute=_generator,
    serves=StorageKind.ISCSI,
    exitrd=ExitrdPart(compute=_exitrd),
)
