"""SSH in the initrd (feature ssh): the host logs in to the booting guest over a forwarded
port on 127.0.0.1 and answers the LUKS passphrase prompt; nobody types at the console.

The LUKS2 root (harness/stackdisks.py, scenario "luks") is booted with no key file, so
only the passphrase opens it. A key the image does not authorize is refused first; the
authorized key's login then gets the prompt on its terminal and answers it, the real
root reports the token, checks that no process of the initrd's SSH server (or of its
sessions) is left, installs the exitrd, and powers off through it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest

from bookend.sshkeys import parse_public_key
from harness.exitrdjob import SHUTDOWN_LIMIT, install_exitrd_job, split_at_pivot
from harness.guestjob import read_job_output, run_job
from harness.images import bookend
from harness.network import LOOPBACK, free_loopback_port, user_network
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.stackdisks import StackDisks

PROMPT = "Please enter passphrase for disk"
# From QEMU's start: the initrd's network and server come up within the boot's first
# minutes under TCG; a login is tried again until then.
SERVER_LIMIT = 420
LOGIN_LIMIT = 300
# Seconds from QEMU's start to the passphrase's answer: past systemd's default 90 s wait
# for the root device (the guest's clock starts a moment after QEMU's).
LATE_ANSWER = 110

# Every process of the real root, by its program; an initrd program shows as deleted
# (systemd empties the initrd's RAM filesystem after switch-root).
PROCESSES_JOB = """
for process in /proc/[0-9]*; do
    exe=$(readlink "$process/exe" 2>/dev/null) || continue
    echo "${process#/proc/} $exe"
done > /job/out/processes
"""


def make_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path],
                   check=True)  # fmt: skip
    return path


def ssh_argv(key: Path, port: int, known_hosts: Path, *options: str) -> list[str]:
    """ssh to the guest's forwarded port with only key, learning its host key on first use."""
    return ["ssh", "-F", "/dev/null", *options, "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            f"root@{LOOPBACK}"]  # fmt: skip


def refused_once_up(stranger: Path, port: int, known_hosts: Path) -> str:
    """Try the stranger's key until the server answers; return what ssh said then."""
    deadline = time.monotonic() + SERVER_LIMIT
    said = ""
    while time.monotonic() < deadline:
        result = subprocess.run([*ssh_argv(stranger, port, known_hosts), "true"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        said = result.stderr
        if "Permission denied" in said or result.returncode == 0:
            return f"status {result.returncode}: {said}"
        time.sleep(3)  # not up yet: the port forward resets or closes the connection
    pytest.fail(f"the initrd's SSH server did not answer in {SERVER_LIMIT} s: {said}")


def answer_over_ssh(key: Path, port: int, known_hosts: Path, passphrase: str) -> str:
    """Log in with a terminal, wait for the prompt there, type the passphrase; return the
    session's output once the server closes it (at switch-root)."""
    argv = ssh_argv(key, port, known_hosts, "-tt")
    session = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    assert session.stdin is not None and session.stdout is not None
    output = bytearray()
    reader = threading.Thread(target=_collect, args=(session.stdout, output))
    reader.start()
    try:
        deadline = time.monotonic() + LOGIN_LIMIT
        while PROMPT.encode() not in output and session.poll() is None:
            assert time.monotonic() < deadline, f"no prompt over SSH: {output.decode()!r}"
            time.sleep(0.5)
        assert PROMPT.encode() in output, f"the session ended: {output.decode(errors='replace')!r}"
        session.stdin.write(passphrase.encode() + b"\n")
        session.stdin.flush()
        session.wait(timeout=LOGIN_LIMIT)
    finally:
        session.kill()
        reader.join()
    return output.decode(errors="replace")


def _collect(stream: IO[bytes], into: bytearray) -> None:
    while chunk := stream.read1(4096):  # type: ignore[attr-defined]
        into.extend(chunk)


def test_luks_root_unlocked_over_ssh_and_nothing_of_the_server_left(
    kernel: Kernel,
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = stacks["luks"]
    passphrase = stack.passphrase
    assert passphrase and stack.luks_uuid and stack.luks_name
    client, stranger = make_key(tmp_path / "client"), make_key(tmp_path / "stranger")
    images = tmp_path / "images"
    images.mkdir()
    monkeypatch.setenv("BOOKEND_STATE_DIR", str(tmp_path / "state"))  # the generated host key
    built = bookend("build", "--kver", kernel.version, "-o", str(images / "initrd.img"),
                    "--generic", "--ssh-authorized-keys", f"{client}.pub", check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    printed = re.findall(r"ssh host key of the initrd: (\S+) (SHA256:\S+)", built.stdout)
    assert printed, built.stdout
    initrd = images / "initrd.img"
    assert initrd.stat().st_mode & 0o777 == 0o600  # it holds the host's private key

    port = free_loopback_port()
    nic = user_network(hostfwd=((port, 22),))
    append = (f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} "
              "ip=dhcp rw")  # fmt: skip
    job = install_exitrd_job(tmp_path / "job.img", images, then=PROCESSES_JOB)
    known_hosts = tmp_path / "known_hosts"
    said: dict[str, str] = {}

    def unlock_over_ssh(vm: Boot) -> None:
        vm.expect(PROMPT, timeout=SERVER_LIMIT)  # the boot waits for the passphrase
        said["stranger"] = refused_once_up(stranger, port, known_hosts)
        # The answer comes later than systemd's default 90 s wait for the root device, as a
        # person's often does: the image with ssh must still be waiting (no emergency mode).
        time.sleep(max(0.0, vm.started + LATE_ANSWER - time.monotonic()))
        said["client"] = answer_over_ssh(client, port, known_hosts, passphrase)

    options = replace(root_boot, initrd=initrd, append=append, network=nic.args,
                      disks=(Disk(stack.disks[0]), job), timeout=900)  # fmt: skip
    done = run_job(options, on_the_way=unlock_over_ssh, exit_timeout=SHUTDOWN_LIMIT)
    assert done.status == 0, done.why_failed(options.log_path)

    # The stranger's key was refused by a running server; the client's got the prompt.
    assert "Permission denied (publickey)" in said["stranger"], said["stranger"]
    assert "bookend initrd: answering the boot's passphrase requests" in said["client"]
    # The server's host key is the one whose fingerprint the build printed.
    served = parse_public_key(known_hosts.read_text().split(maxsplit=1)[1].strip())
    assert not isinstance(served, str)
    assert (served.kind, served.fingerprint) in printed

    processes = read_job_output(job.path, "processes", tmp_path / "processes").read_text()
    assert re.search(r"^1 /usr/lib/systemd/systemd$", processes, re.M), processes
    leftovers = [line for line in processes.splitlines()
                 if re.search(r"dropbear|sshd|\(deleted\)", line)]  # fmt: skip
    assert not leftovers, f"processes of the initrd left in the root: {leftovers}"

    # The exitrd still takes the machine down: unpacked, pivoted into, powered off (run_job
    # saw QEMU exit 0).
    running, shutdown = split_at_pivot(done.text)
    assert re.search(r"bookend: exitrd \w{64} .*: \d+ entries copied", running), running[-3000:]
    assert "shutdown" in shutdown
    print(f"ssh unlock: image {initrd.stat().st_size / 1e6:.1f} MB, boot {done.seconds:.0f} s")
