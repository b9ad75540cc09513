r"""Boot a kernel in QEMU and talk to it over the serial console: the one runner that
`bookend boot-test` and the test harness (harness/qemu.py) share.

    with Guest(qemu_argv(BootOptions(kernel=..., initrd=..., disks=(disk,))), timeout=600) as vm:
        vm.wait_for(r"Reached target .*initrd\.target", timeout=240)

A `Guest` runs QEMU in the background; a reader thread collects the console text
so a caller can wait for lines, `send()` keystrokes and wait for QEMU's exit. QEMU is
always killed when the with-block ends, so a failure never leaks a guest. The machine
of each architecture (QEMU's program, board, CPU, console) is in bookend.arches.
"""

from __future__ import annotations

import codecs
import enum
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bookend.arches import X86_64, Arch

TAIL_LINES = 60

# CSI sequences (colours, cursor moves, "erase line") and the short escapes
# (e.g. ESC c, which SeaBIOS sends to reset the terminal).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-Z\\-~]")
# An escape or a carriage return cut off at the end of a read: kept back until
# the next read completes it, so a sequence split across reads is still removed
# and a split "\r\n" does not become two line breaks.
_UNFINISHED = re.compile(r"(\x1b(\[[0-?]*[ -/]*|[ -/]*)|\r+)$")


class Bus(enum.Enum):
    """How a disk is attached; the guest kernel needs the matching driver."""

    VIRTIO = "virtio"  # virtio-blk-pci, /dev/vdX
    AHCI = "ahci"  # ide-hd on an AHCI controller, /dev/sdX
    NVME = "nvme"  # an NVMe controller with one namespace, /dev/nvmeXn1


@dataclass(frozen=True)
class Disk:
    path: Path
    bus: Bus = Bus.VIRTIO
    format: str = "raw"
    # False lets the guest's writes reach the file (e.g. a job disk whose
    # results the host reads back); the cached disks must keep the default.
    snapshot: bool = True
    # False gives QEMU only the drive, with no device the guest could see: the test
    # plugs it in later with `plug_virtio_disk` (a disk that appears late).
    plugged: bool = True
    # Bytes of the file before what the guest sees as the disk's start.
    offset: int = 0
    # Its place in the firmware's boot order (QEMU's bootindex); None: not in it.
    bootindex: int | None = None


@dataclass(frozen=True)
class Kernel:
    path: Path
    version: str


def installed_kernels(boot_dir: Path = Path("/boot")) -> list[Kernel]:
    """Kernels in boot_dir, oldest first by version (so 6.10 sorts after 6.9)."""

    def version_key(kernel: Kernel) -> list[tuple[int, str]]:
        return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", kernel.version)]

    kernels = [
        Kernel(path, path.name.removeprefix("vmlinuz-")) for path in boot_dir.glob("vmlinuz-*")
    ]
    return sorted(kernels, key=version_key)


def drive_args(disks: Sequence[Disk]) -> list[str]:
    """QEMU arguments that attach each disk on its bus, in order."""
    args: list[str] = []
    ahci_ports = 0
    for index, disk in enumerate(disks):
        drive = f"disk{index}"
        # A comma in a path would end the option; QEMU escapes it by doubling.
        path = os.fspath(disk.path).replace(",", ",,")
        # A drive's own snapshot=off overrides the global -snapshot (QEMU only
        # applies -snapshot to drives that say nothing).
        snapshot = "" if disk.snapshot else ",snapshot=off"
        # QEMU's raw driver can start a disk at an offset into its file.
        offset = f",offset={disk.offset}" if disk.offset else ""
        args += ["-drive", f"file={path},format={disk.format},if=none,id={drive}{snapshot}{offset}"]
        # A stable serial gives each disk a predictable /dev/disk/by-id name.
        serial = f"bookend{index}"
        boot = "" if disk.bootindex is None else f",bootindex={disk.bootindex}"
        if not disk.plugged:
            if disk.bus is not Bus.VIRTIO:
                raise ValueError(f"only virtio disks are plugged in late, not {disk.bus.value}")
        elif disk.bus is Bus.VIRTIO:
            args += ["-device", f"virtio-blk-pci,drive={drive},serial={serial}{boot}"]
        elif disk.bus is Bus.AHCI:
            if ahci_ports == 0:
                args += ["-device", "ahci,id=ahci0"]
            args += ["-device", f"ide-hd,drive={drive},bus=ahci0.{ahci_ports},serial={serial}"]
            ahci_ports += 1
        else:
            args += ["-device", f"nvme,drive={drive},serial={serial}"]
    return args


@dataclass(frozen=True)
class BootOptions:
    """Everything about one guest's boot; `boot(options)` starts it.

    Either kernel (with initrd and append, the way a boot loader passes them) or esp (a
    directory OVMF boots EFI/BOOT/BOOTX64.EFI from, with no command line from outside).
    Plain paths in disks are attached as virtio disks.
    """

    kernel: Path | None = None
    initrd: Path | None = None
    disks: tuple[Disk | Path, ...] = ()
    # More kernel command line, after the console and panic settings every boot has.
    append: str = ""
    esp: Path | None = None
    # OVMF variables with Secure Boot keys enrolled (harness/secureboot.py): the Secure
    # Boot firmware boots from the disks in their bootindex order (their ESP images),
    # with neither a kernel nor esp.
    secure_boot_vars: Path | None = None
    # A writable OVMF variables store (a copy of OVMF_VARS_4M.fd) for a kernel or ESP
    # booted under UEFI: the guest's variable writes reach this file, not the snapshot,
    # so the next boot given the same file sees them (systemd's HibernateLocation).
    efi_vars: Path | None = None
    memory_mib: int = 1024
    cpus: int = 2
    # A second channel, apart from the console, for changing the hardware (harness/qmp.py).
    qmp_socket: Path | None = None
    # QEMU arguments for network devices (harness/network.py makes them); none: no NIC.
    network: tuple[str, ...] = ()
    # More QEMU arguments for devices a test adds: a TPM (-tpmdev/-device), a display.
    devices: tuple[str, ...] = ()
    # More QEMU arguments that add no ACPI table of their own, so the PVH entry still
    # works: SMBIOS strings (-smbios type=11,...), fw_cfg files (-fw_cfg name=opt/...: a
    # PVH boot of Debian 12's vmlinux listed the same ACPI tables with one), another
    # serial port.
    plain_devices: tuple[str, ...] = ()
    # Descriptors QEMU inherits, e.g. the sockets of a network link between guests.
    pass_fds: tuple[int, ...] = ()
    # Seconds after which QEMU is killed, whatever the test still waits for.
    timeout: float = 600
    # A guest reboot boots the machine again (same kernel and command line) instead of
    # ending QEMU: for tests of the reboot verb.
    reboot: bool = False
    # Where the console goes as well, for a post-mortem.
    log_path: Path | None = None
    echo: Callable[[str], None] | None = None
    # The machine emulated; a kernel for another architecture needs its Arch here.
    arch: Arch = X86_64
    # QEMU's accelerator: "tcg" (software, always works) or "kvm" (see probe_kvm).
    accel: str = "tcg"

    @property
    def attached(self) -> list[Disk]:
        return [d if isinstance(d, Disk) else Disk(d) for d in self.disks]


def machine_argv(options: BootOptions) -> list[str]:
    """The machine every test boots: emulated, serial console, no reboot."""
    network = list(options.network) or ["-nic", "none"]
    return [
        options.arch.qemu_program,
        # KVM only where probe_kvm saw a guest run under it; TCG always works.
        "-accel", options.accel, *options.arch.qemu_machine,
        "-m", str(options.memory_mib), "-smp", str(options.cpus),
        # The serial port is the guest's console, on our stdin/stdout; the
        # monitor goes nowhere so no byte we send is taken as a QEMU command.
        "-nographic", "-monitor", "none", "-serial", "stdio",
        # A reboot or panic ends QEMU instead of booting again, unless asked.
        *([] if options.reboot else ["-no-reboot"]),
        # Writes go to a throwaway overlay, unless a Disk says otherwise: the
        # cached disks are never modified.
        "-snapshot",
        # Most tests need no network, and a NIC is one more device to probe.
        *network,
    ]  # fmt: skip


def qemu_argv(options: BootOptions) -> list[str]:
    """QEMU's command line for options."""
    argv = machine_argv(options)
    given = [x for x in (options.kernel, options.esp, options.secure_boot_vars) if x is not None]
    if len(given) != 1:
        raise ValueError(
            "boot options: give a kernel or an ESP or Secure Boot variables, exactly one"
        )
    if options.secure_boot_vars is not None:
        argv += secure_boot_args(options.secure_boot_vars)
    elif options.kernel is not None:
        append = f"console={options.arch.serial} panic=-1 {options.append}".strip()
        if options.efi_vars is not None:
            # OVMF loads the kernel's EFI stub from QEMU's fw_cfg: a UEFI boot.
            argv += uefi_firmware_args(options.efi_vars)
        argv += ["-kernel", os.fspath(options.kernel), "-append", append]
        if options.initrd is not None:
            argv += ["-initrd", os.fspath(options.initrd)]
    else:
        assert options.esp is not None
        if options.arch != X86_64:
            raise ValueError(
                f"boot options: an ESP boots only on x86-64 (OVMF), not {options.arch.debian}"
            )
        argv += uefi_args(options.esp, options.efi_vars)
    if options.qmp_socket is not None:
        argv += ["-qmp", f"unix:{os.fspath(options.qmp_socket)},server=on,wait=off"]
    extra = [*options.plain_devices, *options.devices]
    return argv + extra + drive_args(options.attached)


OVMF = Path("/usr/share/ovmf/OVMF.fd")
# Debian's OVMF as code and a separate variables store (ovmf package), without SMM.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_BLANK_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's OVMF built with SMM, for Secure Boot (ovmf package).
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")


def secure_boot_args(variables: Path) -> list[str]:
    """OVMF with Secure Boot: q35 with SMM, the code read-only and the variables store
    secure (only SMM code may write it); writes go to -snapshot's overlay."""
    code = os.fspath(OVMF_SECURE_CODE).replace(",", ",,")
    store = os.fspath(variables).replace(",", ",,")
    return [
        "-machine", "q35,smm=on",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={store}",
    ]  # fmt: skip


def uefi_firmware_args(variables: Path | None) -> list[str]:
    """OVMF as the machine's firmware: with variables, its code read-only and that store
    written in place (the drive's own snapshot=off wins over -snapshot); else the
    combined image, whose variables live only as long as QEMU."""
    if variables is None:
        return ["-bios", os.fspath(OVMF)]
    code = os.fspath(OVMF_CODE).replace(",", ",,")
    store = os.fspath(variables).replace(",", ",,")
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,snapshot=off,file={store}",
    ]  # fmt: skip


def uefi_args(esp: Path, variables: Path | None = None) -> list[str]:
    """Boot as a UEFI machine does: OVMF starts EFI/BOOT/BOOTX64.EFI from an ESP.

    The ESP is the directory esp, shown to the guest as a FAT disk (QEMU's vvfat),
    read-only and first in the boot order; nothing is passed on a command line, so
    what boots is only what the ESP holds. variables: see uefi_firmware_args.
    """
    path = os.fspath(esp).replace(",", ",,")
    return [
        *uefi_firmware_args(variables),
        "-drive", f"file=fat:{path},format=raw,if=none,id=esp,readonly=on,snapshot=off",
        "-device", "virtio-blk-pci,drive=esp,bootindex=0",
    ]  # fmt: skip


class Guest:
    """A running guest and everything it has printed on its console so far."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        log_path: Path | None = None,
        echo: Callable[[str], None] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.timeout = timeout
        self.started = time.monotonic()
        self._echo = echo
        self._text = ""  # console text, ANSI stripped, "\n" line ends
        self._cursor = 0  # where the next expect() starts searching
        self._eof = False
        self._expired = False
        self._changed = threading.Condition()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
        )
        self._log = log_path.open("w", encoding="utf-8") if log_path else None
        if self._log:
            self._log.write(f"+ {shlex.join(self.argv)}\n")
        self._reader = threading.Thread(target=self._read_console, name="qemu-console", daemon=True)
        self._reader.start()
        # A guest that hangs is killed even if the test forgets to wait for it.
        self._watchdog = threading.Timer(timeout, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def text(self) -> str:
        """All console text so far."""
        with self._changed:
            return self._text

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def expired(self) -> bool:
        """Whether the watchdog killed QEMU at the boot's time limit."""
        return self._expired

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """Wait for pattern in console text not yet consumed and consume up to its end;
        None when the time is up or QEMU's console ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(self._text, self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._changed.wait(left)

    def send(self, text: str) -> None:
        r"""Type text on the guest's serial console (say "\r" for Enter)."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def exit_status(self, timeout: float) -> int | None:
        """Wait for QEMU to exit (guest powered off, or panicked) and return its status;
        None when it still ran after timeout or the watchdog killed it."""
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join()
        return None if self._expired else status

    def kill(self) -> None:
        """Stop QEMU if it still runs, and finish the console log."""
        self._watchdog.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join()
        if self._proc.stdin:
            self._proc.stdin.close()
        if self._log:
            self._log.close()

    def _expire(self) -> None:
        self._expired = True
        self._proc.kill()

    def failure(self, what: str, timeout: float) -> str:
        """A failure message: what went wrong, why waiting stopped, the console's tail."""
        status = self._proc.poll()
        if self._expired:
            why = f"QEMU killed after the boot's {self.timeout:g} s limit"
        elif status is not None:
            why = f"QEMU exited with status {status}"
        else:
            why = f"waited {timeout:g} s"
        tail = "\n".join(self.text.splitlines()[-TAIL_LINES:])
        log = f" (full log: {self.log_path})" if self.log_path else ""
        return (
            f"{what}: {why}, {self.elapsed:.0f} s into the boot{log}\n"
            f"--- last {TAIL_LINES} console lines ---\n{tail}\n--- end of console ---"
        )

    def _read_console(self) -> None:
        assert self._proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""
        while chunk := os.read(self._proc.stdout.fileno(), 65536):
            raw = held + decoder.decode(chunk)
            cut = _UNFINISHED.search(raw)
            held = raw[cut.start() :] if cut else ""
            self._append(raw[: cut.start()] if cut else raw)
        self._append(held)
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _append(self, raw: str) -> None:
        text = console_text(raw, at_line_start=self._text.endswith("\n") or not self._text)
        if not text:
            return
        if self._log:
            self._log.write(text)
            self._log.flush()
        if self._echo:
            self._echo(text)
        with self._changed:
            self._text += text
            self._changed.notify_all()


def console_text(raw: str, at_line_start: bool) -> str:
    r"""Console output as plain lines: no escapes, "\n" line ends.

    systemd starts each status line with "\r" (to overwrite an "A start job is
    running" line) and the tty ends lines with "\r\n". A "\r" at the start of
    a line is dropped; one in mid-line starts a new line, so an overwritten
    status stays readable.
    """
    text = re.sub(r"\r+\n", "\n", _ANSI.sub("", raw))
    text = re.sub(r"(^|\n)\r+" if at_line_start else r"(\n)\r+", r"\1", text)
    return text.replace("\r", "\n")


# SeaBIOS's last line when it finds nothing to boot: the guest ran its whole firmware.
PROBE_SEEN = "No bootable device"
PROBE_SECONDS = 5.0


def kvm_usable(arch: Arch, host_machine: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a guest runs under KVM here: /dev/kvm is usable, the guest is this CPU's
    kind, and the machine the boot will use (same CPU model, memory and CPU count) gets
    through SeaBIOS to "No bootable device" within timeout, with no disk and no kernel.
    Where /dev/kvm exists but guests hang (nested machines without the CPU's
    virtualisation) that line never comes: QEMU is killed when the time is up. Where
    QEMU cannot start that CPU model under KVM (a nested host refusing an MSR of
    "-cpu max") it ends without the line. Either way the answer is no, and the caller
    falls back to TCG."""
    from bookend.arches import HOST_MACHINES

    # Compared by name: a test's Arch may differ from the table's in its QEMU program.
    if HOST_MACHINES.get(host_machine) != arch.debian:
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if arch.debian != X86_64.debian:
        return False  # the probe needs SeaBIOS; other boards boot no firmware by default
    argv = machine_argv(BootOptions(arch=arch, accel="kvm"))
    try:
        with Guest(argv, timeout=timeout) as probe:
            return probe.wait_for(PROBE_SEEN, timeout) is not None
    except OSError:
        return False
