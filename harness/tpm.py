"""A software TPM 2.0 for a guest: swtpm on the host, attached through QEMU's TPM emulator.

    with software_tpm(state_dir) as devices:
        boot(replace(options, devices=devices))

swtpm keeps the TPM's seeds and NV memory in its state directory, so a state copied from
a cached one (copy_state) is the same TPM the cached disks were enrolled with; a fresh,
empty directory is a new TPM. SeaBIOS finds the TPM, sends TPM2_Startup and measures
what it runs into the PCRs (the SMBIOS tables into PCR 1) before the kernel starts.
swtpm runs with --terminate: it ends when QEMU closes the connection.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SWTPM = "swtpm"
# swtpm makes its socket within milliseconds; a loaded host may take longer.
START_LIMIT = 30.0
STOP_LIMIT = 10.0


def copy_state(cached: Path, target: Path) -> Path:
    """A private copy of a cached TPM state: a boot changes it (counters, sessions)."""
    shutil.copytree(cached, target)
    return target


def qemu_tpm_args(socket: Path, model: str = "tpm-tis") -> tuple[str, ...]:
    """QEMU arguments for a TPM device backed by the swtpm listening on socket."""
    return (
        "-chardev", f"socket,id=chrtpm,path={socket}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", f"{model},tpmdev=tpm0",
    )  # fmt: skip


@contextmanager
def software_tpm(state: Path, model: str = "tpm-tis") -> Iterator[tuple[str, ...]]:
    """Run swtpm on state (a directory) and give the QEMU arguments that attach it.

    The socket lives in a short private directory: a unix socket's path may not be
    longer than 107 bytes, which a pytest tmp_path can be.
    """
    state.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bookend-swtpm-") as directory:
        socket = Path(directory, "swtpm.sock")
        argv = [
            SWTPM, "socket", "--tpm2", "--terminate",
            "--tpmstate", f"dir={state}",
            "--ctrl", f"type=unixio,path={socket}",
            "--log", f"file={state / 'swtpm.log'},level=1",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            wait_for_socket(process, socket)
            yield qemu_tpm_args(socket, model)
        finally:
            stop(process)


def wait_for_socket(process: subprocess.Popen[bytes], socket: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while not socket.exists():
        if process.poll() is not None:
            raise RuntimeError(f"swtpm exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"swtpm made no socket {socket} in {START_LIMIT:.0f} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """swtpm ends by itself once QEMU has gone (--terminate); make sure it has."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(STOP_LIMIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def host_tpm(state: Path) -> Iterator[str]:
    """Run swtpm on state for a program on the host, and give the TPM2 TCTI string that
    reaches it (systemd's --tpm2-device=, which loads libtss2-tcti-swtpm): a credential
    sealed there is sealed by the TPM a later software_tpm(state) gives a guest.
    swtpm listens on 127.0.0.1 only, on two ports found free just before: the TCTI
    takes the control channel's to be the next after the command port."""
    state.mkdir(parents=True, exist_ok=True)
    server = free_port_pair()
    ctrl = server + 1
    argv = [
        SWTPM, "socket", "--tpm2",
        "--tpmstate", f"dir={state}",
        "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
        "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
        # Powered on and started, as the firmware leaves it for a guest.
        "--flags", "not-need-init,startup-clear",
        "--log", f"file={state / 'swtpm-host.log'},level=1",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_LIMIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", ctrl), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"swtpm did not listen on 127.0.0.1:{ctrl}") from None
                time.sleep(0.05)
        yield f"swtpm:host=127.0.0.1,port={server}"
    finally:
        stop(process)


def free_port_pair() -> int:
    """A port of 127.0.0.1 that is free, and the next one too."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two free ports in a row on 127.0.0.1")
