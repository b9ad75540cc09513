"""NFS roots, in dracut's syntax and the kernel's, mounted by the sysroot's mount.nfs.

The command line (dracut.cmdline(7), the kernel's nfsroot.txt):
    root=nfs:[SERVER:]/PATH[:OPTIONS]      (netroot=nfs:... alike)
    root=nfs4:[SERVER:]/PATH[:OPTIONS]     (netroot=nfs4:... alike)
    root=/dev/nfs nfsroot=[SERVER:]/PATH[,OPTIONS]
OPTIONS are mount.nfs's, comma-separated; SERVER may be [IPv6]; without SERVER the
server is ip='s second field (ip=CLIENT:SERVER:...), as the kernel takes it.
`rootflags=` adds options, `rw`/`ro` apply as for any root.

A generator shipped in the image reads the command line and writes, with no loop
waiting for anything, `sysroot.mount` (Type=nfs, or nfs4 for nfs4:) into its early
directory, so it replaces what systemd-fstab-generator makes of a root= it cannot
read. The mount wants and is after network-online.target, which the network feature
scopes to the interfaces ip= names (as the nbd root's unit does). The kernel's own
modules come through the module closure: nfs, and nfsv3/nfsv4, which nfs asks for by
name when a mount of that version starts (and sunrpc, lockd, ... as their dependencies).

NFSv3 locking: the root is mounted with `nolock` unless the command line says `lock`
or `nolock` itself, as the kernel's own NFS root and initramfs-tools do. Locking over
NFSv3 (NLM) needs rpc.statd (and rpcbind) running from the mount until the unmount:
started in the initrd, they would have to survive switch-root and the final kill as
root storage daemons, they would hold the ports and the state directory the real
root's own nfs-common starts its rpcbind and rpc.statd with, and their record of the
servers to notify after a reboot would live in a RAM disk that the reboot loses. A
root filesystem is one client's own, so local locks (what nolock gives: flock and
fcntl locks kept by this kernel) are what it needs; the real root's nfs-common then
runs statd for its other v3 mounts exactly as on a disk-rooted machine. NFSv4 has
locking in the protocol (the kernel ignores nolock there). An explicit `lock` is
passed on with a warning: mount.nfs then fails, as the initrd runs no rpc.statd.

The exitrd: systemd-shutdown unmounts the old root (umount2, no helper needed) with
the network still up (the real root keeps the initrd's addresses, see network.py); a
detach step then says on the console whether any NFS mount is left, and forces off
one that is (a server that has gone away must not stop the power-off).
"""

from __future__ import annotations

from bookend.archive import ArchiveEntry, EntryKind
from bookend.features.base import Contribution, ExitrdPart, Feature, FeatureContext, Generated
from bookend.features.storage_daemons import DETACH_DIR
from bookend.storage import StorageKind

GENERATOR = "/usr/lib/systemd/system-generators/bookend-nfs-generator"
DETACH_STEP = f"{DETACH_DIR}/50-nfs"

GENERATOR_SCRIPT = r"""#!/bin/sh
# Written by bookend: root=nfs:[SERVER:]/PATH[:OPTIONS], root=nfs4:..., netroot=nfs:...,
# netroot=nfs4:... and root=/dev/nfs nfsroot=[SERVER:]/PATH[,OPTIONS] become
# sysroot.mount. BOOKEND_CMDLINE and BOOKEND_KMSG name other files (for tests).
set -f
early=${2:?usage: $0 NORMAL_DIR EARLY_DIR LATE_DIR}
kmsg=${BOOKEND_KMSG:-/dev/kmsg}
cmdline=
IFS= read -r cmdline < "${BOOKEND_CMDLINE:-/proc/cmdline}" || [ -n "$cmdline" ] || exit 0
say() { echo "<$1>bookend-nfs-generator: $2" > "$kmsg"; }

# ip=CLIENT:SERVER:GATEWAY:NETMASK:...: the server, where the root names none.
ip_server() {
    rest=$1
    case "$rest" in \[*) rest=${rest#*]} ;; *) rest=${rest#*:} ;; esac  # the client
    rest=${rest#:}
    case "$rest" in
        \[*) server=${rest%%]*}; echo "${server#\[}" ;;
        *) echo "${rest%%:*}" ;;
    esac
}

kind= spec= nfsroot= devnfs= rootflags= mode=ro ip_srv=
for word in $cmdline; do
    case "$word" in
        root=nfs:*|netroot=nfs:*) kind=nfs spec=${word#*=nfs:} ;;
        root=nfs4:*|netroot=nfs4:*) kind=nfs4 spec=${word#*=nfs4:} ;;
        root=/dev/nfs) devnfs=yes ;;
        nfsroot=*) nfsroot=${word#nfsroot=} ;;
        ip=*:*:*:*) server=$(ip_server "${word#ip=}"); ip_srv=${server:-$ip_srv} ;;
        rootflags=*) rootflags=${word#rootflags=} ;;
        rw) mode=rw ;;
        ro) mode=ro ;;
    esac
done

server= path= options=
if [ -n "$kind" ]; then
    # [SERVER:]/PATH[:OPTIONS]
    case "$spec" in
        \[*) server=${spec%%]*}; server=${server#\[}; spec=${spec#*]}; spec=${spec#:} ;;
        /*) ;;
        *) server=${spec%%:*}; spec=${spec#"$server"}; spec=${spec#:} ;;
    esac
    path=${spec%%:*}
    [ "$path" = "$spec" ] || options=${spec#*:}
elif [ -n "$devnfs" ]; then
    [ -n "$nfsroot" ] || { say 3 "root=/dev/nfs needs nfsroot=[SERVER:]/PATH"; exit 0; }
    kind=nfs
    # [SERVER:]/PATH[,OPTIONS]
    spec=${nfsroot%%,*}
    [ "$spec" = "$nfsroot" ] || options=${nfsroot#*,}
    case "$spec" in
        \[*) server=${spec%%]*}; server=${server#\[}; path=${spec#*]:} ;;
        /*) path=$spec ;;
        *) server=${spec%%:*}; path=${spec#*:} ;;
    esac
else
    exit 0
fi
server=${server:-$ip_srv}
if [ -z "$server" ] || [ -z "$path" ]; then
    say 3 "no server or path for the NFS root (server '$server', path '$path')"
    exit 0
fi
case "$server" in *:*) what="[$server]:$path" ;; *) what="$server:$path" ;; esac

options="$mode${options:+,$options}${rootflags:+,$rootflags}"
if [ "$kind" = nfs ]; then
    case ",$options," in
        *,nolock,*) ;;
        *,lock,*) say 4 "'lock' on an NFSv3 root needs rpc.statd, which the initrd does not run" ;;
        *) options="$options,nolock" ;;  # NLM needs rpc.statd: see bookend's nfs feature
    esac
fi

mkdir -p "$early/initrd-root-fs.target.requires"
cat > "$early/sysroot.mount" <<EOF
# Written by bookend-nfs-generator from the kernel command line.
[Unit]
Description=NFS root (/sysroot from $what)
Documentation=man:nfs(5)
SourcePath=/proc/cmdline
Before=initrd-root-fs.target
Wants=network-online.target
After=network-online.target

[Mount]
What=$what
Where=/sysroot
Type=$kind
Options=$options
EOF
ln -sf ../sysroot.mount "$early/initrd-root-fs.target.requires/sysroot.mount"
exit 0
"""

DETACH_SCRIPT = """\
#!/bin/sh
# Written by bookend: systemd-shutdown has unmounted the old root by now; say whether an
# NFS mount is left, and force off one that is (its server may be gone).
left=
while read -r _ point type _; do
    case "$type" in nfs|nfs4) left="$left $point" ;; esac
done < /proc/mounts
if [ -z "$left" ]; then
    echo "bookend: NFS root unmounted (no NFS mount left)" > /dev/kmsg
    exit 0
fi
for point in $left; do
    echo "bookend: NFS mount $point is still mounted: forcing it off" > /dev/kmsg
    umount -f -l "$point"
done
"""


def _generator(context: FeatureContext) -> Contribution:
    entry = ArchiveEntry(GENERATOR, EntryKind.FILE, 0o755, data=GENERATOR_SCRIPT.encode())
    return [Generated(entry, "feature nfs: root=nfs:..., nfsroot= into sysroot.mount")]


FEATURE = Feature(
    name="nfs",
    help="root=nfs:/nfs4:SERVER:/PATH or root=/dev/nfs nfsroot=: mounted by mount.nfs",
    # storage-daemons: its exitrd hook runs the detach step (no daemon is started).
    requires=("network", "storage-daemons"),
    executables=("mount.nfs", "?mount.nfs4", "/bin/sh", "mkdir", "ln", "cat"),
    units=("?remote-fs-pre.target", "?remote-fs.target"),
    # nfs asks for nfsv3 and nfsv4 by name when a mount of that version starts.
    modules=("nfs", "?nfsv3", "?nfsv4"),
    # libtirpc reads netconfig for every RPC; mount.nfs looks up "nfs" and "mountd" in
    # rpc, protocol and service names in protocols and services; nfs.conf its defaults.
    files=("/etc/netconfig", "?/etc/rpc", "?/etc/protocols", "?/etc/services", "?/etc/nfs.conf"),
    compute=_generator,
    serves=StorageKind.NFS,
    exitrd=ExitrdPart(
        executables=("/bin/sh", "umount"),
        files=(ArchiveEntry(DETACH_STEP, EntryKind.FILE, 0o755, data=DETACH_SCRIPT.encode()),),
        purpose="report and force off NFS mounts left after the old root is unmounted",
    ),
)
