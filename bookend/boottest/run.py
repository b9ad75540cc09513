"""`bookend boot-test`: boot a kernel and an image in QEMU against the user's disks, get
the root's positive signal, power off through the exitrd, and say what happened.

The disks are always attached as snapshots (QEMU keeps the guest's writes in a
throwaway overlay), so a boot-test never changes them. With no disk the root is the
sysroot itself, shared read-only by QEMU over 9p and made writable in the guest's RAM
(systemd.volatile=overlay): a throwaway root that leaves the sysroot as it was.
guest.py says what the guest runs; report.py reads the console; timeline.py draws it.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bookend.arches import X86_64, Arch
from bookend.boottest.guest import MARK, command_line, write_script_disk
from bookend.boottest.pvh import direct_kernel
from bookend.boottest.qemu import BootOptions, Disk, Guest, kvm_usable, qemu_argv
from bookend.boottest.report import EMERGENCY, PANIC, PIVOT, RUN_INIT, SWITCHED, Report, parse
from bookend.config import Layer
from bookend.errors import ConfigError

# After a line that ends the boot (emergency mode, a panic): seconds to keep reading
# the console for the cause before QEMU is stopped.
GRACE = 8.0
# From the root's last mark to QEMU's exit: stopping the root's units, the pivot into
# the exitrd, detaching the storage.
SHUTDOWN_LIMIT = 300.0
PASSPHRASE_PROMPT = "Please enter passphrase for disk"
# The 9p mount tag of a shared sysroot: root= names it (systemd-fstab-generator mounts a
# root= that is no device path as it is, with rootfstype= and rootflags=).
SHARE_TAG = "bookend-sysroot"
# The feature whose modules mount it (bookend/data/features.d/sysroot-share.toml).
SHARE_FEATURE = "sysroot-share"
# The source boot-test's own settings are named by, in errors and origins.
BOOT_TEST = "boot-test"
_QCOW2 = b"QFI\xfb"
# What a file that is not a disk image often is, by its first bytes.
_NOT_DISKS = (
    (b"\x7fELF", "an ELF program"),
    (b"070701", "a cpio archive (an initrd?)"),
    (b"070702", "a cpio archive (an initrd?)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file (an initrd?)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"MZ", "an EFI or kernel image"),
)


def image_settings(given: Mapping[str, Any], scratch: Path, share: bool) -> Layer:
    """What boot-test asks of the image it builds, a layer after the build options given:
    the exitrd carried inside it (nothing is installed in the root), the drivers of
    QEMU's virtio disks, the images in scratch unless given a place, and with share (no
    --disk: the sysroot is the root) the feature that mounts the shared sysroot."""
    values: dict[str, Any] = {
        "exitrd": True,
        "exitrd_in_initrd": True,
        "driver_classes": ["virtio"],
    }
    for key, name in (("output", "initrd.img"), ("exitrd_output", "exitrd.img")):
        if given.get(key) is None:
            values[key] = str(scratch / name)
    if share:
        values["features"] = [SHARE_FEATURE]
    return BOOT_TEST, values


@dataclass(frozen=True)
class BootTest:
    """One boot-test's inputs, checked (check_inputs) before anything runs."""

    kernel: Path
    image: Path
    disks: tuple[Path, ...]
    append: str = ""
    accel: str = "auto"  # auto, kvm or tcg
    timeout: float = 900.0  # seconds for the whole boot, shutdown included
    memory_mib: int = 1024
    cpus: int = 2
    passphrase: str | None = None  # typed at each LUKS passphrase prompt
    expect_exitrd: bool = True  # the image carries an exitrd: the shutdown must use it
    console_log: Path | None = None
    arch: Arch = X86_64
    cache_dir: Path | None = None  # where the unpacked kernel is kept (pvh.py)
    share: Path | None = None  # a root tree shared read-only as the root (with no disks)


def disk_format(path: Path) -> str:
    """raw or qcow2; a ConfigError naming the file when it is not a disk image."""
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a disk image")
    if not path.exists():
        raise ConfigError(f"{path}: no such disk image")
    if path.is_block_device():
        return "raw"
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file or block device, not a disk image")
    with path.open("rb") as source:
        head = source.read(8)
    if head.startswith(_QCOW2):
        return "qcow2"
    for magic, kind in _NOT_DISKS:
        if head.startswith(magic):
            raise ConfigError(f"{path}: {kind}, not a disk image")
    size = path.stat().st_size
    if size == 0 or size % 512:
        raise ConfigError(f"{path}: {size} bytes, not a whole number of 512-byte sectors: "
                          "not a disk image")  # fmt: skip
    return "raw"


def share_args(tree: Path) -> list[str]:
    """QEMU's arguments that share tree read-only with the guest as SHARE_TAG.
    security_model=none: the guest sees the files' own owners and modes."""
    path = os.fspath(tree).replace(",", ",,")
    return ["-virtfs", f"local,path={path},mount_tag={SHARE_TAG},readonly=on,security_model=none"]


def share_words() -> str:
    """The kernel command-line words that boot the shared tree as a throwaway root:
    mounted read-only over 9p, with a tmpfs laid over it by the initrd's
    systemd-volatile-root.service (overlayfs), so the root is writable and its writes
    stay in RAM. fstab=no: the tree's /etc/fstab names the disks of the machine it
    belongs to, which this guest does not have (their waits would fail the boot)."""
    flags = "trans=virtio,version=9p2000.L,msize=262144,cache=loose"
    return f"root={SHARE_TAG} rootfstype=9p rootflags={flags} ro systemd.volatile=overlay fstab=no"


def check_share(tree: Path) -> None:
    """A one-line ConfigError unless tree looks like a root the guest can boot."""
    if not tree.is_dir():
        raise ConfigError(f"{tree}: not a directory, no root tree to share (--sysroot)")
    if not any((tree / init).exists() for init in ("sbin/init", "usr/sbin/init")):
        raise ConfigError(f"{tree}: no sbin/init, not a root tree to boot (--sysroot)")


def check_disks_and_qemu(
    disks: list[Path], arch: Arch = X86_64, share: Path | None = None
) -> list[Disk]:
    """The disks to attach; a one-line ConfigError for a file that is no disk, or no QEMU.
    With no disks the root is share, a tree shared read-only."""
    if not disks:
        if share is None:
            raise ConfigError("boot-test: no --disk and no root tree to share")
        check_share(share)
    attached = [Disk(path, format=disk_format(path)) for path in disks]
    if shutil.which(arch.qemu_program) is None:
        raise ConfigError(f"no QEMU: {arch.qemu_program} is not on PATH")
    return attached


# Below this the kernel, the unpacked initrd and the exitrd kept in /run do not fit.
MIN_MEMORY_MIB = 256


def check_machine(memory_mib: int, cpus: int, timeout: float) -> None:
    """A one-line ConfigError for a guest QEMU would refuse or that could never boot."""
    if memory_mib < MIN_MEMORY_MIB:
        raise ConfigError(f"--memory {memory_mib}: at least {MIN_MEMORY_MIB} MiB")
    if cpus < 1:
        raise ConfigError(f"--cpus {cpus}: at least 1")
    if not timeout > 0:
        raise ConfigError(f"--timeout {timeout:g}: a number of seconds above 0")


def check_inputs(test: BootTest) -> list[Disk]:
    """The disks to attach; a one-line ConfigError for a missing kernel, image or QEMU,
    or a guest too small to boot."""
    check_machine(test.memory_mib, test.cpus, test.timeout)
    if not test.kernel.is_file():
        raise ConfigError(f"{test.kernel}: no kernel there (--kernel)")
    if not test.image.is_file():
        raise ConfigError(f"{test.image}: no image there")
    if test.accel not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"--accel: {test.accel!r} is not auto, kvm or tcg")
    return check_disks_and_qemu(list(test.disks), test.arch, test.share)


def choose_accel(test: BootTest) -> str:
    if test.accel != "auto":
        return test.accel
    return "kvm" if kvm_usable(test.arch, platform.machine()) else "tcg"


def run_boot_test(test: BootTest, progress: Callable[[float, str], None] | None = None) -> Report:
    """Boot once and report; progress gets a short line whenever the boot moves on."""
    disks = check_inputs(test)
    accel = choose_accel(test)
    token = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="bookend-boot-test-") as scratch:
        script = Path(scratch) / "script.img"
        write_script_disk(script, token)
        serial = f"bookend{len(disks)}"  # drive_args names each disk's serial by its index
        kernel = test.kernel
        if test.cache_dir is not None:
            kernel = direct_kernel(kernel, test.cache_dir / "kernels")
        share = [] if disks or test.share is None else share_args(test.share)
        root = share_words() if share else ""
        options = BootOptions(
            kernel=kernel,
            initrd=test.image,
            disks=(*disks, Disk(script)),
            devices=tuple(share),
            append=" ".join(w for w in (command_line(serial), root, test.append) if w),
            memory_mib=test.memory_mib,
            cpus=test.cpus,
            timeout=test.timeout,
            log_path=test.console_log,
            arch=test.arch,
            accel=accel,
        )
        started = time.monotonic()
        with Guest(qemu_argv(options), timeout=test.timeout, log_path=test.console_log) as vm:
            status = _watch(vm, test, token, progress or (lambda seconds, stage: None))
            text = vm.text
    report = parse(text, token, status, test.expect_exitrd)
    extra = {"kernel": str(test.kernel), "image": str(test.image), "accel": accel,
             "seconds": round(time.monotonic() - started, 1),
             "disks": [str(d) for d in test.disks]}  # fmt: skip
    if not test.disks and test.share is not None:
        extra["shared_root"] = str(test.share)
    if test.console_log is not None:
        extra["console_log"] = str(test.console_log)
    return replace(report, extra=extra)


def _stage(text: str, token: str) -> str:
    """Where the boot is, from the console so far."""
    if PIVOT.search(text):
        return "shutdown: in the exitrd"
    if f"{MARK} {token} poweroff" in text:
        return "shutdown"
    if f"{MARK} {token} reached" in text:
        return "root reached, reading its journal"
    if f"{MARK} {token} starting" in text:
        return "root: starting its default target"
    if SWITCHED.search(text):
        return "root"
    if RUN_INIT.search(text):
        return "initrd"
    return "kernel"


def _watch(
    vm: Guest, test: BootTest, token: str, progress: Callable[[float, str], None]
) -> int | None:
    """Follow the boot to QEMU's exit; QEMU's status, or None when it was stopped."""
    stage = ""
    typed = 0
    ending: float | None = None
    while True:
        status = vm.exit_status(1.0)
        if status is not None or vm.expired:
            return status
        text = vm.text
        now = _stage(text, token)
        if now != stage:
            stage = now
        progress(vm.elapsed, stage)
        prompts = text.count(PASSPHRASE_PROMPT)
        if test.passphrase is not None and prompts > typed:
            vm.send(test.passphrase + "\r")
            typed = prompts
        failing = EMERGENCY.search(text) or PANIC.search(text)
        if failing and f"{MARK} {token} poweroff" not in text and ending is None:
            ending = time.monotonic() + GRACE
        if ending is not None and time.monotonic() > ending:
            vm.kill()
            return None


def progress_printer() -> Callable[[float, str], None]:
    """A progress line on standard error: rewritten in place each second on a terminal,
    else one line each time the stage changes."""
    err = sys.stderr
    shown = [""]

    def show(seconds: float, stage: str) -> None:
        line = f"boot-test: {seconds:4.0f} s  {stage}"
        if err.isatty():
            err.write(f"\r{line}\x1b[K")
            err.flush()
        elif stage != shown[0]:
            err.write(line + "\n")
            err.flush()
        shown[0] = stage

    return show


def end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def default_cache() -> Path | None:
    from bookend.scancache import default_directory

    return default_directory(os.environ)


def test_image_carries_exitrd(image: Path) -> bool:
    """Whether image holds an exitrd it copies to /run/initramfs (exitrd_in_initrd); an
    image bookend cannot read (not a cpio) carries none."""
    from bookend.errors import BookendError
    from bookend.exitrd_store import CARRIED
    from bookend.inspect.image import scan_image

    try:
        entries = scan_image(image).final()
    except (BookendError, OSError, ValueError):
        return False
    return f"{CARRIED.lstrip('/')}/shutdown" in entries
