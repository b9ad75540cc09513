"""Networks of guests, for tests of roots that come over the network.

Only two kinds, so no test sends a packet anywhere but 127.0.0.1 and between guests:

- `Link`: an Ethernet cable between two guests. It is a TCP connection on 127.0.0.1
  that this process makes itself (the kernel picks a free port while listening, so no
  two runs can collide) and hands to both QEMUs as connected sockets
  (`-netdev socket,fd=N`); QEMU sends each frame over it with its length in front.
- `user_network`: QEMU's user-mode network with `restrict=on`, so the guest reaches
  nothing but what `hostfwd` (host 127.0.0.1 port to guest port) and `guestfwd`
  (guest address and port to host 127.0.0.1 port) forward. A `tcp:` guestfwd connects
  to the host once, when QEMU starts, and serves a single guest connection; `relayed`
  forwards run harness/relay.py for every guest connection instead, so a client may
  connect again (and the server need not listen before QEMU starts).

A NIC's options go into `BootOptions(network=..., pass_fds=...)`. A guest with several
NICs gives each its own `index` (its netdev is `net<index>`, its MAC its own) and joins
them with `joined()`; NIC number index sits in PCI slot 3 + index, so udev names it
`interface_name(index)`: ens3, ens4, ...
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# QEMU's user-mode network puts the guest at 10.0.2.15 and the host side at 10.0.2.2.
USER_GUEST_ADDRESS = "10.0.2.15"
# An address on that network no slirp service uses, for servers the guest is given.
USER_SERVER_ADDRESS = "10.0.2.100"
RELAY = Path(__file__).with_name("relay.py")


# QEMU's default i440fx machine holds slots 0-2 (host bridge, ISA bridge, VGA); the NICs
# come first on the command line, each in a slot given explicitly from here up.
FIRST_NIC_SLOT = 3


def mac_address(index: int) -> str:
    """A locally administered MAC in QEMU's 52:54:00 range, one per index."""
    return f"52:54:00:12:34:{index:02x}"


def netdev_id(index: int) -> str:
    """The QEMU netdev of a guest's NIC number index, e.g. for QMP's set_link."""
    return f"net{index}"


def interface_name(index: int) -> str:
    """The name udev gives NIC number index in the guest: predictable naming by the PCI
    slot QEMU's ACPI tables announce (ID_NET_NAME_SLOT, "ens" + slot)."""
    return f"ens{FIRST_NIC_SLOT + index}"


@dataclass(frozen=True)
class Nic:
    """What a guest's NIC needs: QEMU arguments and the descriptors QEMU must inherit."""

    args: tuple[str, ...]
    pass_fds: tuple[int, ...] = ()
    mac: str = ""


def nic_args(netdev: str, mac: str, index: int = 0) -> tuple[str, ...]:
    name, slot = netdev_id(index), FIRST_NIC_SLOT + index
    return ("-netdev", f"{netdev},id={name}",
            "-device", f"virtio-net-pci,netdev={name},mac={mac},addr={slot:#x}")  # fmt: skip


def joined(*nics: Nic) -> Nic:
    """Several NICs of one guest (each made with its own index) as one set of options."""
    return Nic(
        args=tuple(arg for nic in nics for arg in nic.args),
        pass_fds=tuple(fd for nic in nics for fd in nic.pass_fds),
        mac=nics[0].mac if nics else "",
    )


@dataclass(frozen=True)
class Link:
    """Both ends of one cable; give end(0) to one guest and end(1) to the other."""

    sockets: tuple[socket.socket, socket.socket]

    def end(self, which: int, *, mac: str | None = None, index: int = 0) -> Nic:
        """One end as a guest's NIC number index (its MAC differs by end and by index)."""
        fd = self.sockets[which].fileno()
        address = mac or mac_address(0x10 * index + which + 1)
        return Nic(nic_args(f"socket,fd={fd}", address, index), pass_fds=(fd,), mac=address)


@contextmanager
def link() -> Iterator[Link]:
    """A cable over a TCP connection on 127.0.0.1; closed (on the host's side) at the end.

    The QEMUs hold their own copies of the ends, so closing here does not cut a cable
    between guests that still run.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        one = socket.create_connection(listener.getsockname())
        other, _ = listener.accept()
    try:
        for end in (one, other):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield Link((one, other))
    finally:
        one.close()
        other.close()


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment, for a hostfwd QEMU binds itself.

    There is a window until QEMU binds it; a collision makes QEMU fail to start, loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def user_network(
    *,
    hostfwd: tuple[tuple[int, int], ...] = (),
    guestfwd: tuple[tuple[str, int, int], ...] = (),
    relayed: tuple[tuple[str, int, int], ...] = (),
    relay_wait: float = 0,
    mac: str | None = None,
    index: int = 0,
) -> Nic:
    """QEMU's user-mode network, restricted: nothing leaves but the forwards.

    hostfwd: (host port on 127.0.0.1, guest port). guestfwd and relayed: (address the
    guest connects to in 10.0.2.0/24, its port, host port on 127.0.0.1); relayed ones
    take any number of guest connections, one relay process each. relay_wait: seconds
    a relay tries a server that is down before it closes the guest's connection (0:
    closed at once). index: the guest's NIC number (each user network its own slirp,
    with its own DHCP server).
    """
    options = ["user", "restrict=on"]
    options += [f"hostfwd=tcp:{LOOPBACK}:{host}-:{guest}" for host, guest in hostfwd]
    options += [
        f"guestfwd=tcp:{address}:{port}-tcp:{LOOPBACK}:{host}" for address, port, host in guestfwd
    ]
    relay = f"{sys.executable} -I -S {RELAY}"
    options += [
        f"guestfwd=tcp:{address}:{port}-cmd:{relay} {host} {relay_wait:g}"
        for address, port, host in relayed
    ]
    address = mac or mac_address(0x10 * index + 1)
    return Nic(nic_args(",".join(options), address, index), mac=address)
