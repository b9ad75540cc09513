"""Two guests on one cable (harness/network.py) exchange a message.

Each boots the root disk through an initrd that loads virtio_net, and runs a job that
gives its NIC (found by MAC) a static address with systemd-networkd. One listens, the
other connects and sends a random word; the listener writes what it got, and from
which address, to its job disk. The cable is a TCP connection on 127.0.0.1, so no
packet goes anywhere else.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

import pytest

from harness.guestjob import make_job_disk, read_job_output
from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.network import link
from harness.qemu import BootOptions, Kernel, boot
from harness.token import expect_token, new_token, with_token

SERVER, CLIENT = "10.0.0.1", "10.0.0.2"
PORT = 7777
# Both guests boot side by side, one CPU each.
LIMIT = 900

PEER = """\
import socket, sys, time
mode, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 300
while True:  # until networkd has set the address, or the listener listens
    try:
        if mode == "serve":
            server = socket.create_server((address, port))
        else:
            sender = socket.create_connection((address, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
if mode == "serve":
    server.settimeout(300)
    connection, peer = server.accept()
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    print(f"{received.decode()} from {peer[0]}")
else:
    sender.sendall(sys.argv[4].encode())
    sender.close()
"""


def peer_job(mac: str, address: str, peer_command: str) -> str:
    return f"""\
#!/bin/sh
set -eux
mkdir -p /run/systemd/network
printf '[Match]\\nMACAddress={mac}\\n[Network]\\nAddress={address}/24\\n' \\
    > /run/systemd/network/10-bookend-test.network
systemctl start systemd-networkd.service
python3 /job/peer.py {peer_command}
"""


@pytest.fixture(scope="module")
def net_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("net") / "initrd.img"
    return build_image(output, kernel.version, *QEMU_VIRTIO_EXT4, "--add-module", "virtio_net",
                       "--no-exitrd")  # fmt: skip


def test_two_guests_on_one_link_exchange_a_message(
    root_boot: BootOptions, net_initrd: Path, tmp_path: Path
) -> None:
    word = secrets.token_hex(8)
    peer = tmp_path / "peer.py"
    peer.write_text(PEER)
    tokens = new_token(), new_token()
    with link() as cable:
        ends = cable.end(0), cable.end(1)
        jobs = (
            peer_job(ends[0].mac, SERVER, f"serve {SERVER} {PORT} > /job/out/received"),
            peer_job(ends[1].mac, CLIENT, f"send {SERVER} {PORT} {word}"),
        )
        guests = []
        for index, (end, job, token) in enumerate(zip(ends, jobs, tokens, strict=True)):
            disk = make_job_disk(tmp_path / f"job{index}.img", job, files={"peer.py": peer})
            options = replace(root_boot, initrd=net_initrd, disks=(*root_boot.disks, disk),
                              append=f"{root_boot.append} bookend.job", cpus=1, timeout=LIMIT,
                              network=end.args, pass_fds=end.pass_fds,
                              log_path=tmp_path / f"console{index}.log")  # fmt: skip
            guests.append((boot(with_token(options, token)), disk))
        try:
            for (vm, _), token in zip(guests, tokens, strict=True):
                vm.expect(r"BOOKEND-JOB-STATUS 0\b", timeout=LIMIT)
                expect_token(vm, token, LIMIT)
        finally:
            for vm, _ in guests:
                vm.kill()
    received = read_job_output(guests[0][1].path, "received", tmp_path / "received")
    assert received.read_text().strip() == f"{word} from {CLIENT}"
