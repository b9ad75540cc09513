"""rd.neednet=1 without a link: the initrd's wait for the network ends at
rd.net.timeout.ifup=, and the boot stops in emergency mode naming the NIC; the real root
never starts.

(An NBD root booting by DHCP or a static ip= and powering off through the exitrd, which
disconnects the device only after the old root is unmounted, is proven in
tests/vm/test_nics.py's boots: the cable-out boot by DHCP on one NIC, the two-NIC boots
by DHCP and by a static ip= naming the second NIC.)
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from harness.network import user_network
from harness.qemu import BootOptions, boot
from harness.qmp import Qmp

BOOT_LIMIT = 900
NET_TIMEOUT = 10
NETDEV = "net0"  # the id harness/network.py gives a guest's first NIC


def test_neednet_without_link_ends_in_emergency_naming_the_interface(
    root_boot: BootOptions, nbd_images: Path, console_log: Path, tmp_path: Path
) -> None:
    socket = tmp_path / "qmp.sock"
    options = replace(
        root_boot,
        initrd=nbd_images / "initrd.img",
        append=f"{root_boot.append} ip=dhcp rd.neednet=1 rd.net.timeout.ifup={NET_TIMEOUT}",
        network=user_network().args,
        qmp_socket=socket,
        timeout=BOOT_LIMIT,
    )
    with boot(options) as vm, Qmp(socket) as qmp:
        # The cable is out before the guest's kernel has even started.
        qmp.execute("set_link", name=NETDEV, up=False)
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=300)
        # systemd shortens long status lines in the middle: match the unit or its end.
        vm.expect(r"Starting .*(networkd-wait-online|to be Configured)", timeout=300)
        began = vm.elapsed
        named = vm.expect(
            r"bookend: network interface (\S+) is not online \((\S+), no carrier\)", timeout=240
        )
        assert named.group(1) != "lo" and re.fullmatch(r"(en|eth)\w+", named.group(1))
        vm.expect(r"Reached target .*emergency\.target", timeout=120)
        # The wait ended at the timeout given, not systemd's 120 s default.
        assert vm.elapsed - began < NET_TIMEOUT + 60
        vm.expect(r"root account is locked", timeout=60)
        vm.kill()
    # The real root never started: the only greeting is the initrd's.
    greetings = re.findall(r"Welcome to [^\n]*!", console_log.read_text(errors="replace"))
    assert greetings and all("(bookend initrd)" in line for line in greetings), greetings
