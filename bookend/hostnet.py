"""The network interfaces a network root's traffic uses, and the drivers under them.

Read from the kernel's own tables, as the rest of hostonly detection is (no `ip`):
- Where the kernel shows the server's address (an NFS mount's `addr=` in mountinfo, an
  iSCSI connection's `persistent_address` in sysfs), the interface is the one the
  kernel routes that address through: the longest matching prefix of the main routing
  table (/proc/net/route, /proc/net/ipv6_route), lowest metric first, which is what
  `ip route get` answers on a host without policy routing rules.
- Where it does not (an NBD device's sysfs names no peer, and its socket, handed to the
  kernel, belongs to no process), or no route matches: every interface that is up and
  has an address (a route of its own in the IPv4 table, or a global IPv6 address).
  Those are the only ones that can carry the connection; a down or unaddressed NIC
  cannot.
- A bond, VLAN or bridge reaches the wire through its lower devices (sysfs `lower_*`
  links), followed down to the NICs that have a device and a driver.

dracut, for comparison: for a hostonly iSCSI or NFS root it writes `ip=`/`ifname=` for
the interface `ip route get` names for the server (the iSCSI connection's
persistent_address, the NFS mount's addr=), and finds no interface for NBD; for the
drivers it takes every wired NIC driver the host has loaded (hostonly `instmods` keeps
loaded modules only), unless `--hostonly-nics` names the interfaces. bookend takes the
drivers of the interfaces the root's traffic uses, and nothing else: another NIC's
driver costs room in every image and does not help mount the root.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
RTF_UP = 0x1
RTF_REJECT = 0x200
IPV6_SCOPE_GLOBAL = "00"  # /proc/net/if_inet6's scope column

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Route:
    """One usable route of the main table, as the kernel lists it in /proc."""

    interface: str
    network: Network
    metric: int


def read_routes(procfs: Path) -> list[Route]:
    """The IPv4 and IPv6 routes that are up and lead out of the machine (not via lo)."""
    return [
        route for route in [*_ipv4_routes(procfs), *_ipv6_routes(procfs)] if route.interface != "lo"
    ]


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return []


def _ipv4_routes(procfs: Path) -> list[Route]:
    """/proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; the
    addresses are the network-order words printed as this machine's integers."""
    routes = []
    for fields in _lines(procfs / "net/route")[1:]:
        if len(fields) < 8 or not _flags_usable(fields[3]):
            continue
        destination, mask = (_ipv4(word) for word in (fields[1], fields[7]))
        network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        routes.append(Route(fields[0], network, int(fields[6])))
    return routes


def _ipv4(word: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(word, 16).to_bytes(4, sys.byteorder))


def _ipv6_routes(procfs: Path) -> list[Route]:
    """/proc/net/ipv6_route: destination, its prefix length, source, its prefix length,
    next hop, metric, refcount, use, flags, interface; all hexadecimal."""
    routes = []
    for fields in _lines(procfs / "net/ipv6_route"):
        if len(fields) != 10 or not _flags_usable(fields[8]):
            continue
        address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        network = ipaddress.IPv6Network((address, int(fields[1], 16)), strict=False)
        routes.append(Route(fields[9], network, int(fields[5], 16)))
    return routes


def _flags_usable(word: str) -> bool:
    flags = int(word, 16)
    return bool(flags & RTF_UP) and not flags & RTF_REJECT


def route_interface(routes: list[Route], server: str) -> str | None:
    """The interface the kernel sends packets for server through, or None."""
    try:
        address = ipaddress.ip_address(server.strip("[]"))
    except ValueError:
        return None  # a host name: mountinfo and sysfs hold addresses, but be safe
    matching = [
        route
        for route in routes
        if route.network.version == address.version and address in route.network
    ]
    if not matching:
        return None
    best = max(matching, key=lambda route: (route.network.prefixlen, -route.metric))
    return best.interface


def default_route_interfaces(procfs: Path) -> list[str]:
    """Interfaces with an IPv4 or IPv6 default route."""
    routes = read_routes(procfs)
    return list(dict.fromkeys(r.interface for r in routes if r.network.prefixlen == 0))


def addressed_interfaces(sysfs: Path, procfs: Path) -> list[str]:
    """Interfaces that are up, not loopback, and have an address: an IPv4 route of
    their own (each IPv4 address brings its prefix's), or a global IPv6 address (every
    up interface has an IPv6 link-local route, so IPv6 routes tell nothing)."""
    routed = {r.interface for r in read_routes(procfs) if r.network.version == 4}
    global6 = {
        fields[5]
        for fields in _lines(procfs / "net/if_inet6")
        if len(fields) == 6 and fields[3] == IPV6_SCOPE_GLOBAL
    }
    names = []
    for entry in sorted((sysfs / "class/net").glob("*")):
        flags = int(_read(entry / "flags") or "0", 16)
        if flags & IFF_UP and not flags & IFF_LOOPBACK and entry.name in routed | global6:
            names.append(entry.name)
    return names


def lower_interfaces(sysfs: Path, interface: str) -> list[str]:
    """The interface and, for a bond, VLAN or bridge, the devices under it, recursively."""
    found: dict[str, None] = {}
    queue = [interface]
    while queue:
        name = queue.pop(0)
        if name in found:
            continue
        found[name] = None
        directory = sysfs / "class/net" / name
        queue += [link.name.removeprefix("lower_") for link in sorted(directory.glob("lower_*"))]
    return list(found)


def nic_modules(sysfs: Path, interface: str) -> list[tuple[str, str]]:
    """(module or modalias, what it is) for an interface's device and every device above
    it on the bus; nothing for a virtual interface (bridge, bond, VLAN) or a gone one."""
    found: list[tuple[str, str]] = []
    devices = Path(os.path.realpath(sysfs / "devices"))
    link = sysfs / "class/net" / interface / "device"
    if not os.path.lexists(link):
        return found
    level = Path(os.path.realpath(link))
    while level.is_relative_to(devices) and level != devices:
        shown = "/sys/" + level.relative_to(devices.parent).as_posix()
        modalias = _read(level / "modalias")
        if modalias:
            found.append((modalias, f"modalias of {shown} ({modalias})"))
        if os.path.lexists(level / "driver"):
            driver = Path(os.readlink(level / "driver")).name
            module_link = level / "driver/module"
            module = Path(os.readlink(module_link)).name if os.path.lexists(module_link) else driver
            found.append((module, f"driver of {shown} ({driver})"))
        level = level.parent
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
