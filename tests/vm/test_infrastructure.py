"""The QEMU runner itself works: it sees console output and notices QEMU exit."""

from __future__ import annotations

from pathlib import Path

from harness.qemu import BootOptions, Kernel, boot


def test_kernel_without_initrd_panics_and_qemu_exits(
    kernel: Kernel, tmp_path: Path, console_log: Path
) -> None:
    # Debian builds virtio-blk as a module, so without an initrd the kernel
    # finds no /dev/vda; panic=-1 plus -no-reboot must then end QEMU.
    disk = tmp_path / "empty.img"
    with disk.open("wb") as sparse:
        sparse.truncate(1024 * 1024)
    options = BootOptions(kernel=kernel.path, disks=(disk,), append="root=/dev/vda",
                          timeout=180, log_path=console_log)  # fmt: skip
    with boot(options) as vm:
        vm.expect(r"Kernel panic - not syncing: VFS: Unable to mount root fs", timeout=150)
        assert vm.wait_exit(timeout=60) == 0
    assert "Kernel panic" in console_log.read_text()
