"""Architecture facts, in one table: the only place bookend names a triplet or an arch.

A sysroot's architecture is read from its own ELF files (the ELF machine and class of
systemd), never taken from the build host, so an arm64 tree builds an arm64 image on
an x86-64 machine. Each row says what differs by architecture: Debian's multiarch
directory, systemd's architecture name (extension-release ARCHITECTURE=), the
systemd-boot EFI stub, the kernel's arch-specific crypto directory and whether the
kernel loads early microcode from the initrd, and the machine `bookend boot-test` (and
the tests) emulate for it: QEMU's program, board and CPU, and the serial console.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass

from bookend import elf
from bookend.errors import ElfError
from bookend.sysroot import Sysroot


@dataclass(frozen=True)
class Arch:
    elf_machine: str  # e_machine as bookend.elf names it
    elf_class: int  # 32 or 64
    multiarch: str  # Debian's multiarch triplet: /usr/lib/<triplet>
    debian: str  # Debian's architecture name (dpkg --print-architecture)
    systemd: str  # systemd's architecture name (src/basic/architecture.h)
    kernel: str  # the kernel's arch/ directory name
    efi_stub: str | None  # systemd-boot's stub under /usr/lib/systemd/boot/efi
    early_microcode: bool  # the kernel scans the initrd for kernel/<arch>/microcode
    qemu: str | None  # qemu-system-* that emulates it
    # QEMU's board and CPU for a guest: virtio-blk-pci disks, a serial console, power-off.
    qemu_machine: tuple[str, ...] = ()
    serial: str = "ttyS0"  # the serial console's device, for console=
    # xz's branch converter for its machine code (Python's lzma filter id), put before
    # LZMA2 in the exitrd's xz: x86's took Debian 13's exitrd from 1.60 to 1.53 MB
    # (bench/results/2026-12-03-exitrd-size.md). None: not measured, LZMA2 alone.
    xz_branch_filter: int | None = None

    @property
    def qemu_program(self) -> str:
        if self.qemu is None:
            raise ValueError(f"no QEMU emulates {self.debian}")
        return self.qemu

    @property
    def crypto_dir(self) -> str:
        """The arch's accelerated ciphers, relative to /lib/modules/KVER."""
        return f"kernel/arch/{self.kernel}/crypto/"


# The generic "virt" boards have PCI (virtio-blk-pci as on x86-64) and, for arm64, PSCI,
# which QEMU provides itself when it loads the kernel with -kernel, for the power-off.
# cortex-a72, not max: "max" adds pointer authentication, whose emulation makes every
# function call slower under TCG.
ARCHES = (
    Arch("EM_X86_64", 64, "x86_64-linux-gnu", "amd64", "x86-64", "x86",
         "linuxx64.efi.stub", True, "qemu-system-x86_64", ("-cpu", "max"),
         xz_branch_filter=lzma.FILTER_X86),
    Arch("EM_386", 32, "i386-linux-gnu", "i386", "x86", "x86",
         "linuxia32.efi.stub", True, "qemu-system-i386", ("-cpu", "max"),
         xz_branch_filter=lzma.FILTER_X86),
    Arch("EM_AARCH64", 64, "aarch64-linux-gnu", "arm64", "arm64", "arm64",
         "linuxaa64.efi.stub", False, "qemu-system-aarch64",
         ("-M", "virt", "-cpu", "cortex-a72"), "ttyAMA0"),
    Arch("EM_ARM", 32, "arm-linux-gnueabihf", "armhf", "arm", "arm",
         "linuxarm.efi.stub", False, "qemu-system-arm", ("-M", "virt"), "ttyAMA0"),
    Arch("EM_RISCV", 64, "riscv64-linux-gnu", "riscv64", "riscv64", "riscv",
         "linuxriscv64.efi.stub", False, "qemu-system-riscv64", ("-M", "virt")),
    Arch("EM_PPC64", 64, "powerpc64le-linux-gnu", "ppc64el", "ppc64-le", "powerpc",
         None, False, "qemu-system-ppc64", ("-M", "pseries"), "hvc0"),
    Arch("EM_S390", 64, "s390x-linux-gnu", "s390x", "s390x", "s390",
         None, False, "qemu-system-s390x", ("-M", "s390-ccw-virtio"), "ttysclp0"),
)  # fmt: skip
# The machines the tests boot most: this one's and arm64's.
X86_64 = next(arch for arch in ARCHES if arch.debian == "amd64")
ARM64 = next(arch for arch in ARCHES if arch.debian == "arm64")
# platform.machine()'s names of the host CPU, for which arch KVM can run.
HOST_MACHINES = {"x86_64": "amd64", "i686": "i386", "aarch64": "arm64", "armv7l": "armhf",
                 "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}  # fmt: skip


def host_arch(machine: str) -> Arch | None:
    """The Arch of a host CPU by platform.machine()'s name."""
    debian = HOST_MACHINES.get(machine)
    return next((a for a in ARCHES if a.debian == debian), None)


# Programs every systemd sysroot has, read for its architecture, in this order.
ARCH_PROBES = ("/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd-shutdown", "/sbin/init")


def by_elf(machine: str, elf_class: int) -> Arch | None:
    return next((a for a in ARCHES if (a.elf_machine, a.elf_class) == (machine, elf_class)), None)


def sysroot_arch(sysroot: Sysroot) -> Arch | None:
    """The architecture of the sysroot's systemd; None when it has no readable one (a
    fixture tree of empty files) or one not in ARCHES."""
    for program in ARCH_PROBES:
        resolved = sysroot.resolve(program)
        if resolved.st is None:
            continue
        host = sysroot.host_path(resolved.path)
        try:
            if not host.is_file() or not elf.is_elf(host):
                continue
            info = elf.read_elf(host)
        except (ElfError, OSError):
            continue
        return by_elf(info.machine, info.elf_class)
    return None
