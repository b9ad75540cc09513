r"""Boot a kernel in QEMU (software emulation) and talk to it over the serial console.

    with boot(BootOptions(kernel=..., initrd=..., disks=(root.image,), append=...)) as vm:
        vm.expect(r"Reached target .*initrd\.target", timeout=240)

A `Boot` runs QEMU in the background; a reader thread collects the console text
so a test can `expect()` lines, `send()` keystrokes and `wait_exit()`. QEMU is
always killed when the with-block ends, so a failing test never leaks a guest.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from harness.pvh import direct_kernel
from harness.qmp import Qmp

GUEST_CPUS_ENV = "BOOKEND_TEST_GUEST_CPUS"
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


@dataclass(frozen=True)
class Arch:
    """What differs between the machines the tests emulate: QEMU's program, the machine
    and CPU, and the serial port the kernel's console is on."""

    name: str  # Debian's name for the architecture
    qemu: str
    machine: tuple[str, ...]
    console: str


X86_64 = Arch("amd64", "qemu-system-x86_64", ("-cpu", "max"), "ttyS0")
# The generic "virt" board: PCI (virtio-blk-pci as on x86-64), a PL011 serial port,
# and PSCI, which QEMU provides itself when it loads the kernel with -kernel (no
# firmware), for the guest's power-off. cortex-a72, not max: "max" adds pointer
# authentication, whose emulation makes every function call slower under TCG.
ARM64 = Arch("arm64", "qemu-system-aarch64", ("-M", "virt", "-cpu", "cortex-a72"), "ttyAMA0")


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
        if not disk.plugged:
            if disk.bus is not Bus.VIRTIO:
                raise ValueError(f"only virtio disks are plugged in late, not {disk.bus.value}")
        elif disk.bus is Bus.VIRTIO:
            args += ["-device", f"virtio-blk-pci,drive={drive},serial={serial}"]
        elif disk.bus is Bus.AHCI:
            if ahci_ports == 0:
                args += ["-device", "ahci,id=ahci0"]
            args += ["-device", f"ide-hd,drive={drive},bus=ahci0.{ahci_ports},serial={serial}"]
            ahci_ports += 1
        else:
            args += ["-device", f"nvme,drive={drive},serial={serial}"]
    return args


def default_cpus() -> int:
    """Virtual CPUs per guest: BOOKEND_TEST_GUEST_CPUS, else one per guest under xdist.

    Under TCG every virtual CPU is a host thread: with one guest per core (pytest-xdist
    workers), a second CPU per guest only makes the guests take the cores from each other.
    Measured on 2 cores, two workers, six boots: 142 s with one CPU per guest, 224 s with two.
    """
    chosen = os.environ.get(GUEST_CPUS_ENV, "")
    if chosen:
        return int(chosen)
    return 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


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
    memory_mib: int = 1024
    cpus: int = field(default_factory=default_cpus)
    # A second channel, apart from the console, for changing the hardware (qmp.py).
    qmp_socket: Path | None = None
    # QEMU arguments for network devices (harness/network.py makes them); none: no NIC.
    network: tuple[str, ...] = ()
    # More QEMU arguments for devices a test adds: a TPM (-tpmdev/-device), a display.
    devices: tuple[str, ...] = ()
    # More QEMU arguments that add no ACPI table of their own, so the PVH entry still
    # works (see boot()): SMBIOS strings (-smbios type=11,...), another serial port.
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

    @property
    def attached(self) -> list[Disk]:
        return [d if isinstance(d, Disk) else Disk(d) for d in self.disks]


def machine_argv(options: BootOptions) -> list[str]:
    """The machine every test boots: emulated, serial console, no reboot."""
    network = list(options.network) or ["-nic", "none"]
    return [
        options.arch.qemu,
        # KVM is not available (or hangs) where these tests run; TCG always works.
        "-accel", "tcg", *options.arch.machine,
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
    if (options.kernel is None) == (options.esp is None):
        raise ValueError("boot options: give a kernel or an ESP, not both or neither")
    if options.kernel is not None:
        append = f"console={options.arch.console} panic=-1 {options.append}".strip()
        argv += ["-kernel", os.fspath(options.kernel), "-append", append]
        if options.initrd is not None:
            argv += ["-initrd", os.fspath(options.initrd)]
    else:
        assert options.esp is not None
        if options.arch != X86_64:
            raise ValueError(
                f"boot options: an ESP boots only on x86-64 (OVMF), not {options.arch.name}"
            )
        argv += uefi_args(options.esp)
    if options.qmp_socket is not None:
        argv += ["-qmp", f"unix:{os.fspath(options.qmp_socket)},server=on,wait=off"]
    extra = [*options.plain_devices, *options.devices]
    return argv + extra + drive_args(options.attached)


OVMF = Path("/usr/share/ovmf/OVMF.fd")


def uefi_args(esp: Path) -> list[str]:
    """Boot as a UEFI machine does: OVMF starts EFI/BOOT/BOOTX64.EFI from an ESP.

    The ESP is the directory esp, shown to the guest as a FAT disk (QEMU's vvfat),
    read-only and first in the boot order; nothing is passed on a command line, so
    what boots is only what the ESP holds.
    """
    path = os.fspath(esp).replace(",", ",,")
    return [
        "-bios", os.fspath(OVMF),
        "-drive", f"file=fat:{path},format=raw,if=none,id=esp,readonly=on,snapshot=off",
        "-device", "virtio-blk-pci,drive=esp,bootindex=0",
    ]  # fmt: skip


def plug_virtio_disk(qmp: Qmp, index: int) -> None:
    """Plug in disks[index] (given with plugged=False) as a virtio disk, as a hot-plug would.

    QEMU's default i440fx machine announces it to the guest through ACPI PCI hot-plug,
    which Debian's kernel has built in (CONFIG_HOTPLUG_PCI_ACPI=y).
    """
    qmp.execute("device_add", driver="virtio-blk-pci", id=f"late{index}",
                drive=f"disk{index}", serial=f"bookend{index}")  # fmt: skip


def boot(options: BootOptions) -> Boot:
    """Start a guest; use as a with-block, which kills QEMU at its end.

    An x86 kernel is booted from its unpacked vmlinux where it can be (harness/pvh.py),
    on the plain machine only: QEMU's PVH loader puts the initrd at the top of RAM below
    a fixed ACPI allowance, and a TPM's tables outgrow it (the initrd overwrote them:
    no ACPI, so power-off halted instead).
    """
    if options.kernel is not None and not options.devices:
        options = replace(options, kernel=direct_kernel(options.kernel))
    return Boot(qemu_argv(options), timeout=options.timeout, log_path=options.log_path,
                echo=options.echo, pass_fds=options.pass_fds)  # fmt: skip


class Boot:
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

    def __enter__(self) -> Boot:
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

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for pattern in console text not yet consumed; consume up to its end."""
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
                    break
                self._changed.wait(left)
        raise AssertionError(self._failure(f"{regex.pattern!r} not seen", timeout))

    def send(self, text: str) -> None:
        r"""Type text on the guest's serial console (say "\r" for Enter)."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit (guest powered off, or panicked) and return its status."""
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(self._failure("QEMU did not exit", timeout)) from None
        self._reader.join()
        if self._expired:
            raise AssertionError(self._failure("QEMU did not exit", timeout))
        return status

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

    def _failure(self, what: str, timeout: float) -> str:
        """An assertion message: what went wrong, why waiting stopped, the console's tail."""
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
