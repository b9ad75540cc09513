"""Network in the initrd: systemd-networkd, configured the systemd way.

- The kernel command line (`ip=`, `rd.route=`, `nameserver=`, `rd.peerdns=`, `ifname=`,
  `bond=`, `bridge=`, `vlan=`) is turned into .network/.netdev/.link files under
  /run/systemd/network by systemd's own systemd-network-generator.
- bookend's `network_files` (.network/.netdev/.link files of the sysroot) go into the
  image's /etc/systemd/network; with `host_network_files`, so do the sysroot's own
  files there and their drop-ins, except those holding a secret (WireGuard or MACsec
  keys, or the files naming them), which stay out with a warning.
- The root waits for the network only when it needs it: `rd.neednet=1`, or a network
  root whose unit pulls in network-online.target. A generator of bookend's reads the
  command line for rd.neednet= and rd.net.timeout.ifup= (dracut's names) and scopes
  systemd-networkd-wait-online to the interfaces `ip=` names (any one when it names
  none). When it times out, the boot stops in emergency mode and the console names
  each interface that is not online, with its state.
- Addresses outlive switch-root: every .network file the initrd used gets a
  KeepConfiguration=yes drop-in under /run/systemd/network, which the real root keeps,
  so neither the initrd's networkd stopping nor the real root's starting drops an
  address the root filesystem is reached through.
- NIC drivers: generic mode takes the `net` driver class; hostonly mode the drivers
  (and modaliases up the bus) of the host's interfaces that carry a default route and
  of those the network files' [Match] Name= lines name exactly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, ModuleMode
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

UNIT_DIR = "/etc/systemd/system"
NETWORK_DIR = "/etc/systemd/network"
WAIT_ONLINE = "systemd-networkd-wait-online"
WAIT_ONLINE_PROGRAM = f"/usr/lib/systemd/{WAIT_ONLINE}"
# systemd-networkd-wait-online's own default; rd.net.timeout.ifup= changes it.
DEFAULT_TIMEOUT = 120
GENERATOR = "/usr/lib/systemd/system-generators/bookend-network-generator"
REPORT = "/usr/lib/bookend/network-report"
KEEP = "/usr/lib/bookend/network-keep"
KEEP_UNIT = "bookend-network-keep.service"

# A generator: the command line decides whether the root waits for the network, how
# long, and for which interfaces. BOOKEND_CMDLINE names another command line (tests).
GENERATOR_SCRIPT = f"""\
#!/bin/sh
# Written by bookend: rd.neednet=1 makes the root wait for the network;
# rd.net.timeout.ifup=SECONDS bounds the wait; ip= names the interfaces waited for.
set -f
sixth_field() {{ IFS=:; set -- $1; unset IFS; echo "${{6:-}}"; }}
normal=${{1:?usage: $0 NORMAL_DIR [EARLY_DIR LATE_DIR]}}
cmdline=
IFS= read -r cmdline < "${{BOOKEND_CMDLINE:-/proc/cmdline}}" || [ -n "$cmdline" ] || exit 0
neednet=0 timeout={DEFAULT_TIMEOUT} interfaces=
for word in $cmdline; do
    case "$word" in
        rd.neednet=1|rd.neednet) neednet=1 ;;
        rd.neednet=0) neednet=0 ;;
        rd.net.timeout.ifup=*) timeout=${{word#*=}} ;;
        ip=*:*:*:*:*:*)  # ip=CLIENT:PEER:GATEWAY:NETMASK:HOSTNAME:INTERFACE:...
            rest=${{word#ip=}}
            case "$rest" in \\[*) rest=${{rest#*]}} ;; esac  # an IPv6 client address
            iface=$(sixth_field "$rest")
            [ -n "$iface" ] && interfaces="$interfaces -i $iface" ;;
        ip=*:*)  # ip=INTERFACE:METHOD[:...]
            iface=${{word#ip=}}
            interfaces="$interfaces -i ${{iface%%:*}}" ;;
    esac
done
interfaces=${{interfaces# }}
case "$timeout" in ''|*[!0-9]*) timeout={DEFAULT_TIMEOUT} ;; esac
dropins="$normal/{WAIT_ONLINE}.service.d"
mkdir -p "$dropins"
{{
    echo "# Written by bookend-network-generator from the kernel command line."
    echo "[Service]"
    echo "ExecStart="
    echo "ExecStart={WAIT_ONLINE_PROGRAM} --timeout=$timeout ${{interfaces:---any}}"
}} > "$dropins/50-bookend-cmdline.conf"
if [ "$neednet" = 1 ]; then
    mkdir -p "$normal/initrd-root-fs.target.d"
    {{
        echo "# Written by bookend-network-generator: rd.neednet=1."
        echo "[Unit]"
        echo "Wants=network-online.target"
        echo "After=network-online.target"
    }} > "$normal/initrd-root-fs.target.d/50-bookend-neednet.conf"
fi
exit 0
"""

# Run after wait-online stops: when it failed, name every interface that is not online.
# Priority 3 (err) so emergency mode's journal excerpt shows it as well as the console.
REPORT_SCRIPT = """\
#!/bin/sh
# Written by bookend: say which interfaces kept the network from coming up.
[ "${SERVICE_RESULT:-success}" = success ] && exit 0
for dir in /sys/class/net/*; do
    name=${dir##*/}
    [ "$name" = lo ] && continue
    index= carrier=0 oper=unknown
    read -r index < "$dir/ifindex" 2>/dev/null
    read -r carrier < "$dir/carrier" 2>/dev/null
    while IFS='=' read -r key value; do
        [ "$key" = OPER_STATE ] && oper=$value
    done < "/run/systemd/netif/links/$index" 2>/dev/null
    case "$oper" in routable|enslaved) continue ;; esac
    [ "$carrier" = 1 ] && link=carrier || link="no carrier"
    echo "<3>bookend: network interface $name is not online ($oper, $link) after \
the wait for the network (rd.net.timeout.ifup=)" > /dev/kmsg
done
exit 0
"""

WAIT_ONLINE_DROPIN = f"""\
# Written by bookend: the root needs this network; when it does not come up in time,
# stop in emergency mode and name the interfaces that are not online.
[Unit]
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly

[Service]
ExecStopPost=-/bin/sh {REPORT}
"""

KEEP_SCRIPT = f"""\
#!/bin/sh
# Written by bookend: every .network file the initrd's networkd uses keeps its
# configuration, in the initrd and in the real root (which keeps /run), so an address
# the root filesystem is reached through is never dropped.
for file in /run/systemd/network/*.network {NETWORK_DIR}/*.network; do
    [ -e "$file" ] || continue
    dropins="/run/systemd/network/${{file##*/}}.d"
    mkdir -p "$dropins"
    printf '%s\\n' "# Written by bookend: the root may be reached through this network." \\
        "[Network]" "KeepConfiguration=yes" > "$dropins/90-bookend-keep.conf"
done
"""

KEEP_UNIT_TEXT = f"""\
[Unit]
Description=Keep the initrd's network configuration across switch-root
DefaultDependencies=no
After=systemd-network-generator.service
Before=systemd-networkd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {KEEP}
"""

# networkd runs as systemd-network, a user the image's passwd does not have: systemd's
# own sysusers.d line creates it first, as on the running system. A unit of its own,
# not an ExecStartPre=+ of networkd's: systemd looks User= up before any of those runs.
SYSUSERS = "/usr/lib/sysusers.d/systemd-network.conf"
USER_UNIT = "bookend-networkd-user.service"
USER_UNIT_TEXT = f"""\
[Unit]
Description=Create systemd-networkd's user in the initrd
DefaultDependencies=no
Before=systemd-networkd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=systemd-sysusers {SYSUSERS}
"""


def _file(path: str, text: str, reason: str, mode: int = 0o644) -> Generated:
    return Generated(ArchiveEntry(path, EntryKind.FILE, mode, data=text.encode()), reason)


def _link(path: str, target: str, reason: str) -> Generated:
    return Generated(ArchiveEntry(path, EntryKind.SYMLINK, 0o777, target=target), reason)


def _units() -> list[Request | Generated]:
    """The generator, scripts, drop-ins and the links that enable the units."""
    reason = "feature network"
    system = "/usr/lib/systemd/system"
    return [
        _file(GENERATOR, GENERATOR_SCRIPT, f"{reason}: rd.neednet=, wait scope", 0o755),
        _file(REPORT, REPORT_SCRIPT, f"{reason}: name the interfaces not online", 0o755),
        _file(KEEP, KEEP_SCRIPT, f"{reason}: KeepConfiguration= across switch-root", 0o755),
        _file(f"{UNIT_DIR}/{KEEP_UNIT}", KEEP_UNIT_TEXT, f"{reason}: keep the configuration"),
        _file(f"{UNIT_DIR}/{WAIT_ONLINE}.service.d/40-bookend.conf", WAIT_ONLINE_DROPIN, reason),
        _file(f"{UNIT_DIR}/{USER_UNIT}", USER_UNIT_TEXT, f"{reason}: networkd's user"),
        _link(f"{UNIT_DIR}/systemd-networkd.service.wants/{USER_UNIT}", f"../{USER_UNIT}", reason),
        _link(f"{UNIT_DIR}/systemd-networkd.service.wants/{KEEP_UNIT}", f"../{KEEP_UNIT}", reason),
        _link(
            f"{UNIT_DIR}/sysinit.target.wants/systemd-network-generator.service",
            f"{system}/systemd-network-generator.service",
            f"{reason}: ip= and friends from the kernel command line",
        ),
        _link(
            f"{UNIT_DIR}/initrd.target.wants/systemd-networkd.service",
            f"{system}/systemd-networkd.service",
            reason,
        ),
        _link(
            f"{UNIT_DIR}/sockets.target.wants/systemd-networkd.socket",
            f"{system}/systemd-networkd.socket",
            reason,
        ),
        _link(
            f"{UNIT_DIR}/network-online.target.wants/{WAIT_ONLINE}.service",
            f"{system}/{WAIT_ONLINE}.service",
            reason,
        ),
    ]


def _network_files(config: Config) -> list[Request | Generated]:
    """bookend's network_files, where networkd reads them; then, with host_network_files,
    the sysroot's own (a file network_files names wins over the host's of that name)."""
    sysroot = Sysroot(config.sysroot)
    items: list[Request | Generated] = []
    taken: set[str] = set()
    for index, path in enumerate(config.network_files):
        text = sysroot.read_text(path) or ""
        name = path.rsplit("/", 1)[-1]
        origin = config.origin_of("network_files", index)
        items.append(_file(f"{NETWORK_DIR}/{name}", text, f"network_files ({origin}): {path}"))
        taken.add(name)
    if config.host_network_files:
        for path, text in host_network_files(sysroot):
            relative = path.removeprefix(NETWORK_DIR + "/")
            if relative not in taken:
                items.append(_file(path, text, f"host_network_files: {path}"))
    return items


NETWORKD_SUFFIXES = (".network", ".netdev", ".link")
# Keys whose value is a secret or names a file holding one (WireGuard keys, MACsec keys).
# Such a file stays out of the image: an initrd is readable by whoever reads /boot.
SECRET_KEYS = frozenset(
    ("PrivateKey", "PrivateKeyFile", "PresharedKey", "PresharedKeyFile", "Key", "KeyFile")
)


def host_network_files(sysroot: Sysroot) -> list[tuple[str, str]]:
    """(path, text) of the sysroot's own networkd files in /etc/systemd/network and
    their drop-ins, in name order; masked files and files holding a secret left out."""
    found: list[tuple[str, str]] = []
    for name in sorted(sysroot.listdir(NETWORK_DIR)):
        path = f"{NETWORK_DIR}/{name}"
        if name.endswith(NETWORKD_SUFFIXES):
            found += _unless_secret_or_masked(sysroot, path)
        elif name.endswith(tuple(suffix + ".d" for suffix in NETWORKD_SUFFIXES)):
            for conf in sorted(sysroot.listdir(path)):
                if conf.endswith(".conf"):
                    found += _unless_secret_or_masked(sysroot, f"{path}/{conf}")
    return found


def _unless_secret_or_masked(sysroot: Sysroot, path: str) -> list[tuple[str, str]]:
    text = sysroot.read_text(path)
    # A symlink to /dev/null or an empty file masks the vendor file of its name: the
    # image has no vendor network files to mask, so it needs no mask either.
    if not text or not text.strip():
        return []
    secret = secret_key(text)
    if secret:
        log.warning("leaving %s out of the initrd: it holds a secret (%s=)", path, secret)
        return []
    return [(path, text)]


def secret_key(text: str) -> str | None:
    """The first key of a networkd file that holds a secret, if any."""
    for line in text.splitlines():
        key, sep, _ = line.strip().partition("=")
        if sep and key.strip() in SECRET_KEYS:
            return key.strip()
    return None


def default_route_interfaces(procfs: Path) -> list[str]:
    """Interfaces with an IPv4 or IPv6 default route, from procfs' route tables."""
    names: dict[str, None] = {}
    try:
        lines = (procfs / "net/route").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            names[fields[0]] = None
    try:
        lines6 = (procfs / "net/ipv6_route").read_text().splitlines()
    except OSError:
        lines6 = []
    for line in lines6:
        fields = line.split()
        if len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
            names[fields[9]] = None
    return list(names)


def nic_modules(sysfs: Path, interface: str) -> list[tuple[str, str]]:
    """(module or modalias, why) for an interface's device and every device above it."""
    found: list[tuple[str, str]] = []
    devices = Path(os.path.realpath(sysfs / "devices"))
    link = sysfs / "class/net" / interface / "device"
    if not os.path.lexists(link):
        return found  # virtual (bridge, bond...) or gone: no hardware driver
    level = Path(os.path.realpath(link))
    while level.is_relative_to(devices) and level != devices:
        shown = "/sys/" + level.relative_to(devices.parent).as_posix()
        why = f"hostonly: NIC {interface}: {shown}"
        modalias = _read(level / "modalias")
        if modalias:
            found.append((modalias, f"{why} modalias"))
        if os.path.lexists(level / "driver"):
            driver = Path(os.readlink(level / "driver")).name
            module_link = level / "driver/module"
            module = Path(os.readlink(module_link)).name if os.path.lexists(module_link) else driver
            found.append((module, f"{why} driver {driver}"))
        level = level.parent
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def matched_names(network_file: str) -> list[str]:
    """The exact interface names a networkd file's [Match] Name= lines give (no globs)."""
    names: list[str] = []
    section = ""
    for line in network_file.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Match]" and line.startswith("Name="):
            words = line.removeprefix("Name=").split()
            names += [w for w in words if not any(c in w for c in "*?[!")]
    return names


def _drivers(config: Config) -> list[Request | Generated]:
    """Generic: the net class. Hostonly: what the host's default-route NICs use, and
    the NICs network_files name."""
    if config.mode is ModuleMode.GENERIC:
        return [Request(RequestKind.DRIVER_CLASS, "net", "feature network: mode generic", True)]
    sysroot = Sysroot(config.sysroot)
    texts = [sysroot.read_text(path) or "" for path in config.network_files]
    if config.host_network_files:
        texts += [text for _, text in host_network_files(sysroot)]
    named = [name for text in texts for name in matched_names(text)]
    interfaces = dict.fromkeys([*default_route_interfaces(config.procfs), *named])
    return [
        Request(RequestKind.MODULE, name, why, optional=True)
        for interface in interfaces
        for name, why in nic_modules(config.sysfs, interface)
    ]


def _compute(context: FeatureContext) -> Contribution:
    config = context.config
    return [*_units(), *_network_files(config), *_drivers(config)]


FEATURE = Feature(
    name="network",
    help="systemd-networkd from ip=/rd.neednet= and network_files; waits when the root needs it",
    executables=(
        "/usr/lib/systemd/systemd-networkd",
        WAIT_ONLINE_PROGRAM,
        "/usr/lib/systemd/systemd-network-generator",
        "systemd-sysusers",
        "?networkctl",
        "/bin/sh",
        "mkdir",
    ),
    units=(
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-network-generator.service",
        f"{WAIT_ONLINE}.service",
        "network.target",
        "network-pre.target",
        "network-online.target",
    ),
    udev_rules=(
        "80-net-setup-link.rules",
        "?73-special-net-names.rules",
        "?75-net-description.rules",
    ),
    files=(
        SYSUSERS,
        "?/usr/lib/systemd/network/99-default.link",
        "?/usr/lib/systemd/network/73-usb-net-by-mac.link",
        "?/etc/systemd/networkd.conf",
    ),
    # What bond=, bridge= and vlan= create (hostonly detection cannot see them coming).
    modules=("?af_packet", "?bonding", "?bridge", "?8021q"),
    compute=_compute,
    switch_on=SwitchOn(settings=("network_files", "host_network_files")),
)
