"""NBD roots: `root=nbd:SERVER:PORT[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]]` (or `netroot=nbd:...`),
dracut's syntax, connected by nbd-client from the initrd and disconnected by the exitrd.

A generator shipped in the image reads the command line and writes, with no loop
waiting for anything (systemd orders it all):
- `bookend-nbd-root.service`: nbd-client on the kernel's netlink interface. It
  negotiates with the server, hands the socket to the kernel and exits: the kernel
  holds the connection, so no process has to survive switch-root or the final kill.
  That is not a choice of taste: on the ioctl interface the process that keeps the
  device (waiting in NBD_DO_IT) must never see a signal, and systemd's switch-root
  stops every process with kill(-1, SIGSTOP) before it spares the "@" ones; the
  kernel takes the interrupted wait as the end of the connection ("block nbd0:
  shutting down sockets"), and the new root's first reads fail. Seen in this
  project's VM test on Linux 6.1 with systemd 252; dracut and systemd users report
  the same. The unit still carries the marks of a root storage daemon (no default
  dependencies, IgnoreOnIsolate=yes, no ExecStop=), so neither the isolate at
  switch-root nor the real root's shutdown disconnects the device. It is after
  network-online.target, which pulls in systemd-networkd-wait-online. It is written
  to /run/systemd/system rather than the generator directory: the real root's systemd
  empties the generator directories at switch-root but keeps /run, so it finds the
  same unit there, still active, and leaves it alone when it isolates its target.
- `sysroot.mount` from /dev/nbd0, in the generator's early directory so it replaces
  the one systemd-fstab-generator writes for a root= it cannot read. systemd's own udev
  rule keeps dev-nbd0.device unready until the device is connected ("pid" in sysfs),
  so the mount waits for exactly that.
The exitrd disconnects every connected NBD device once the old root is unmounted
(a detach step of the storage-daemons hook, which then stops any daemon left).
"""

from __future__ import annotations

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
)
from bookend.features.storage_daemons import DETACH_DIR
from bookend.storage import StorageKind
from bookend.sysroot import Sysroot

GENERATOR = "/usr/lib/systemd/system-generators/bookend-nbd-generator"
DETACH_STEP = f"{DETACH_DIR}/50-nbd"
UNIT = "bookend-nbd-root.service"
DEVICE = "/dev/nbd0"
CLIENT_PATHS = ("/usr/sbin/nbd-client", "/sbin/nbd-client")

GENERATOR_TEMPLATE = """\
#!/bin/sh
# Written by bookend: root=nbd:SERVER:PORT[/EXPORT][:FSTYPE[:ROOTFLAGS[:NBDOPTS]]]
# (or netroot=nbd:...) becomes @UNIT@ and sysroot.mount from @DEVICE@.
# BOOKEND_CMDLINE, BOOKEND_UNIT_DIR and BOOKEND_KMSG name other files (for tests).
set -f
normal=${1:?usage: $0 NORMAL_DIR EARLY_DIR LATE_DIR}
early=${2:?usage: $0 NORMAL_DIR EARLY_DIR LATE_DIR}
unitdir=${BOOKEND_UNIT_DIR:-/run/systemd/system}
kmsg=${BOOKEND_KMSG:-/dev/kmsg}
cmdline=
IFS= read -r cmdline < "${BOOKEND_CMDLINE:-/proc/cmdline}" || [ -n "$cmdline" ] || exit 0

spec= rootflags= mode=ro own_root=
for word in $cmdline; do
    case "$word" in
        root=nbd:*|netroot=nbd:*) spec=${word#*=nbd:} ;;
        root=*) own_root=${word#root=} ;;  # netroot=nbd: with a root= on the device
        rootflags=*) rootflags=${word#rootflags=} ;;
        rw) mode=rw ;;
        ro) mode=ro ;;
    esac
done
[ -n "$spec" ] || exit 0

case "$spec" in
    \\[*) server=${spec%%]*}; server=${server#\\[}; rest=${spec#*]} ;;  # [IPv6 address]
    *) server=${spec%%:*}; rest=${spec#"$server"} ;;
esac
rest=${rest#:}
IFS=:
set -- $rest
unset IFS
portspec=${1:-10809} fstype=${2:-} flags=${3:-} nbdopts=${4:-}
port=${portspec%%/*}
args="$server $port @DEVICE@"
case "$portspec" in */*) args="$args -name ${portspec#*/}" ;; esac
IFS=,
set -- $nbdopts
unset IFS
for opt in "$@"; do
    case "$opt" in
        name=*) args="$args -name ${opt#*=}" ;;
        bs=*|blocksize=*) args="$args -block-size ${opt#*=}" ;;
        timeout=*) args="$args -timeout ${opt#*=}" ;;
        connections=*) args="$args -connections ${opt#*=}" ;;
        ro|readonly) args="$args -readonly" ;;
        '') ;;
        *) echo "<4>bookend-nbd-generator: ignoring unknown NBD option '$opt'" > "$kmsg" ;;
    esac
done
[ -n "$server" ] && [ -n "$port" ] || {
    echo "<3>bookend-nbd-generator: no server or port in nbd:$spec" > "$kmsg"
    exit 0
}
flags=${flags:-$rootflags}

mkdir -p "$unitdir" "$normal/initrd-root-device.target.wants"
cat > "$unitdir/@UNIT@" <<EOF
# Written by bookend-nbd-generator from the kernel command line: the root's device,
# connected through switch-root until the exitrd disconnects it.
[Unit]
Description=NBD root device from $server:$portspec
Documentation=man:nbd-client(8)
DefaultDependencies=no
IgnoreOnIsolate=yes
Wants=network-online.target modprobe@nbd.service
After=network-online.target modprobe@nbd.service
Before=initrd-root-device.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=@CLIENT@ $args
EOF
ln -sf "$unitdir/@UNIT@" "$normal/initrd-root-device.target.wants/@UNIT@"
[ -z "$own_root" ] || exit 0  # systemd-fstab-generator mounts that root= itself

mkdir -p "$early/initrd-root-fs.target.requires"
cat > "$early/sysroot.mount" <<EOF
# Written by bookend-nbd-generator from the kernel command line.
[Unit]
Description=NBD root (/sysroot from @DEVICE@)
SourcePath=/proc/cmdline
Before=initrd-root-fs.target
Wants=@UNIT@
After=@UNIT@

[Mount]
What=@DEVICE@
Where=/sysroot
${fstype:+Type=$fstype}
Options=$mode${flags:+,$flags}
EOF
ln -sf ../sysroot.mount "$early/initrd-root-fs.target.requires/sysroot.mount"
exit 0
"""

DETACH_TEMPLATE = """\
#!/bin/sh
# Written by bookend: disconnect the NBD devices; systemd-shutdown has unmounted the
# old root by now (the message says whether /oldroot is really gone).
oldroot="unmounted"
while read -r _ point _; do
    [ "$point" = /oldroot ] && oldroot="STILL MOUNTED"
done < /proc/mounts
for dev in /sys/block/nbd*; do
    [ -e "$dev/pid" ] || continue
    echo "bookend: disconnecting NBD device /dev/${dev##*/} (/oldroot $oldroot)" > /dev/kmsg
    @CLIENT@ -d "/dev/${dev##*/}"
done
"""


def client_path(sysroot: Sysroot) -> str:
    found = next((path for path in CLIENT_PATHS if sysroot.exists(path)), None)
    if found is None:
        raise ConfigError(f"feature nbd: the sysroot has no nbd-client ({', '.join(CLIENT_PATHS)})")
    return found


def generator_script(client: str) -> str:
    """The generator, for the sysroot's nbd-client."""
    text = GENERATOR_TEMPLATE.replace("@CLIENT@", client)
    return text.replace("@UNIT@", UNIT).replace("@DEVICE@", DEVICE)


def _generator(context: FeatureContext) -> Contribution:
    sysroot = Sysroot(context.config.sysroot)
    script = generator_script(client_path(sysroot))
    entry = ArchiveEntry(GENERATOR, EntryKind.FILE, 0o755, data=script.encode())
    return [Generated(entry, "feature nbd: root=nbd:... into units")]


def _exitrd(context: FeatureContext) -> Contribution:
    """The exitrd's part: nbd-client and the step that disconnects the devices."""
    client = client_path(Sysroot(context.config.sysroot))
    script = DETACH_TEMPLATE.replace("@CLIENT@", client).encode()
    reason = "feature nbd: disconnect NBD devices after the old root is unmounted"
    return [
        Generated(ArchiveEntry(DETACH_STEP, EntryKind.FILE, 0o755, data=script), reason),
        Request(RequestKind.EXECUTABLE, client, reason),
    ]


FEATURE = Feature(
    name="nbd",
    help="root=nbd:SERVER:PORT[:FSTYPE[:ROOTFLAGS[:NBDOPTS]]]: connected until the exitrd",
    # storage-daemons: its exitrd hook runs the detach step (and stops no daemon here).
    requires=("network", "storage-daemons"),
    executables=("nbd-client", "/bin/sh", "mkdir", "ln", "cat"),
    units=("?modprobe@.service",),
    modules=("nbd",),
    compute=_generator,
    serves=StorageKind.NBD,
    exitrd=ExitrdPart(compute=_exitrd),
)
