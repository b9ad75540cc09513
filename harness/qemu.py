r"""Boot a kernel in QEMU (software emulation) and talk to it over the serial console.

    with boot(BootOptions(kernel=..., initrd=..., disks=(root.image,), append=...)) as vm:
        vm.expect(r"Reached target .*initrd\.target", timeout=240)

The runner is bookend's own (bookend.boottest.qemu, which `bookend boot-test` uses);
this module adds what tests want: `expect()` and `wait_exit()` fail the test with the
console's tail, one virtual CPU per guest under xdist, the tests' cache of unpacked
kernels, and late-plugged disks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from bookend.arches import ARM64, X86_64, Arch
from bookend.boottest.qemu import (
    OVMF,
    OVMF_BLANK_VARS,
    TAIL_LINES,
    Bus,
    Disk,
    Guest,
    Kernel,
    console_text,
    drive_args,
    installed_kernels,
    machine_argv,
    qemu_argv,
    uefi_args,
)
from bookend.boottest.qemu import BootOptions as MachineOptions
from harness.pvh import direct_kernel
from harness.qmp import Qmp

__all__ = [
    "ARM64", "OVMF", "OVMF_BLANK_VARS", "TAIL_LINES", "X86_64", "Arch", "Boot", "BootOptions",
    "Bus", "Disk", "Kernel", "boot", "console_text", "default_cpus", "drive_args",
    "installed_kernels", "machine_argv", "plug_virtio_disk", "qemu_argv", "uefi_args",
]  # fmt: skip

GUEST_CPUS_ENV = "BOOKEND_TEST_GUEST_CPUS"


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
class BootOptions(MachineOptions):
    """The package's options (see there), with the tests' number of virtual CPUs."""

    cpus: int = field(default_factory=default_cpus)


class Boot(Guest):
    """A running guest; a wait that is not met fails the test with the console's tail."""

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for pattern in console text not yet consumed; consume up to its end."""
        match = self.wait_for(pattern, timeout)
        if match is None:
            regex = re.compile(pattern)
            raise AssertionError(self.failure(f"{regex.pattern!r} not seen", timeout))
        return match

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit (guest powered off, or panicked) and return its status."""
        status = self.exit_status(timeout)
        if status is None:
            raise AssertionError(self.failure("QEMU did not exit", timeout))
        return status


def plug_virtio_disk(qmp: Qmp, index: int) -> None:
    """Plug in disks[index] (given with plugged=False) as a virtio disk, as a hot-plug would.

    QEMU's default i440fx machine announces it to the guest through ACPI PCI hot-plug,
    which Debian's kernel has built in (CONFIG_HOTPLUG_PCI_ACPI=y).
    """
    qmp.execute("device_add", driver="virtio-blk-pci", id=f"late{index}",
                drive=f"disk{index}", serial=f"bookend{index}")  # fmt: skip


def boot(options: MachineOptions) -> Boot:
    """Start a guest; use as a with-block, which kills QEMU at its end.

    An x86 kernel is booted from its unpacked vmlinux where it can be (harness/pvh.py),
    on the plain machine only: QEMU's PVH loader puts the initrd at the top of RAM below
    a fixed ACPI allowance, and a TPM's tables outgrow it (the initrd overwrote them:
    no ACPI, so power-off halted instead). Under OVMF (efi_vars) the kernel boots
    through its EFI stub, which only the packed kernel has.
    """
    if options.kernel is not None and not options.devices and options.efi_vars is None:
        options = replace(options, kernel=direct_kernel(options.kernel))
    return Boot(qemu_argv(options), timeout=options.timeout, log_path=options.log_path,
                echo=options.echo, pass_fds=options.pass_fds)  # fmt: skip
