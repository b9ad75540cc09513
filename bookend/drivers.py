"""Classes of kernel drivers, by where they live under /lib/modules/KVER/kernel.

A generic image takes every class so it boots any machine; a hostonly image takes
the classes named with --add-driver-class on top of what detection found. A class is
a set of directories (every module below) and single modules; what a kernel lacks
or builds in is simply not there.
"""

from __future__ import annotations

from dataclasses import dataclass

from bookend.arches import ARCHES


@dataclass(frozen=True)
class DriverClass:
    help: str
    directories: tuple[str, ...] = ()  # relative to /lib/modules/KVER, ending in "/"
    modules: tuple[str, ...] = ()  # names or aliases


DRIVER_CLASSES: dict[str, DriverClass] = {
    "ata": DriverClass("SATA/PATA controllers (ahci, ata_piix, ...)", ("kernel/drivers/ata/",)),
    "scsi": DriverClass(
        "SCSI disks and host adapters, including SAS and Fibre Channel",
        ("kernel/drivers/scsi/", "kernel/drivers/message/fusion/"),
    ),
    "nvme": DriverClass("NVMe disks, PCIe and over fabrics", ("kernel/drivers/nvme/",)),
    "block": DriverClass("block drivers (loop, nbd, virtio_blk, ...)", ("kernel/drivers/block/",)),
    "virtio": DriverClass(
        "virtio transports and disks, for virtual machines",
        ("kernel/drivers/virtio/",),
        ("virtio_blk", "virtio_scsi"),
    ),
    "mmc": DriverClass("SD/MMC cards and eMMC", ("kernel/drivers/mmc/",)),
    "usb-storage": DriverClass(
        "USB mass storage and the USB host controllers under it",
        ("kernel/drivers/usb/storage/", "kernel/drivers/usb/host/"),
    ),
    "md-dm": DriverClass(
        "software RAID and device-mapper (LVM, dm-crypt, multipath)", ("kernel/drivers/md/",)
    ),
    "crypto": DriverClass(
        "ciphers and hashes dm-crypt may need",
        # A kernel has only its own architecture's directory; the others are not there.
        ("kernel/crypto/", *dict.fromkeys(arch.crypto_dir for arch in ARCHES)),
    ),
    "nvdimm": DriverClass("persistent memory", ("kernel/drivers/nvdimm/", "kernel/drivers/dax/")),
    "keyboard": DriverClass(
        "keyboards for a passphrase prompt: PS/2, USB HID and their controllers",
        ("kernel/drivers/input/keyboard/", "kernel/drivers/input/serio/", "kernel/drivers/hid/"),
        ("usbhid", "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd"),
    ),
    "filesystems": DriverClass(
        "filesystems a root or /usr may be on",
        (),
        (
            "ext4",
            "xfs",
            "btrfs",
            "f2fs",
            "vfat",
            "exfat",
            "isofs",
            "udf",
            "squashfs",
            "erofs",
            "overlay",
            "nls_cp437",
            "nls_iso8859_1",
            "nls_utf8",
        ),
    ),
    "net": DriverClass(
        "network cards, for a root over the network (the network feature takes it in generic mode)",
        (
            "kernel/drivers/net/ethernet/",
            "kernel/drivers/net/vmxnet3/",
            "kernel/drivers/net/hyperv/",
        ),
        ("virtio_net", "xen-netfront", "bonding", "8021q", "bridge", "macvlan", "af_packet"),
    ),
    "tpm": DriverClass(
        "TPM chips, for LUKS volumes enrolled in one (the tpm2 feature takes it)",
        ("kernel/drivers/char/tpm/",),
        # Debian builds these two in; other kernels make them modules.
        ("tpm_crb", "tpm_tis"),
    ),
    "drm": DriverClass(
        "displays of virtual machines and firmware framebuffers, for a boot splash (the "
        "plymouth feature takes it in generic mode): simpledrm, bochs, virtio-gpu, qxl, ...",
        (
            "kernel/drivers/gpu/drm/tiny/",
            "kernel/drivers/gpu/drm/virtio/",
            "kernel/drivers/gpu/drm/qxl/",
            "kernel/drivers/gpu/drm/vmwgfx/",
            "kernel/drivers/gpu/drm/hyperv/",
            "kernel/drivers/gpu/drm/xen/",
        ),
        ("simpledrm", "bochs", "bochs-drm", "virtio-gpu", "cirrus"),
    ),
}

# What --generic takes: every class but net, tpm and drm, which only an image with the
# network, tpm2 or plymouth feature needs (each asks for its class itself).
GENERIC_CLASSES = tuple(name for name in DRIVER_CLASSES if name not in ("net", "tpm", "drm"))

# Filesystems --generic can mount the root from: their fsck and mount helpers come too.
GENERIC_FILESYSTEMS = ("ext4", "xfs", "btrfs", "f2fs", "vfat")
