"""The three generators and how each is made to build the same feature set.

dracut and initramfs-tools conflict as Debian packages, and the host keeps
initramfs-tools (the tests use it). So dracut is not installed: its Debian
package is unpacked into a cache directory and run from there with
`dracutbasedir` (harness/foreign.py), reading the host's own files like the other two. The
cryptsetup hooks of initramfs-tools come the same way (installing
cryptsetup-initramfs would rebuild /boot/initrd.img for everyone).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report import Generator
from harness.foreign import unpacked_dracut

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/var/cache/bookend-bench")
INITRAMFS_CONF = Path("/etc/initramfs-tools")
# The same fixed time for every build, so each tool can be reproducible.
SOURCE_DATE_EPOCH = "1700000000"

GENERATORS = (
    Generator("bookend-hostonly", "bookend hostonly"),
    Generator("bookend-generic", "bookend generic"),
    # The hostonly build with --compress none: how much of its time zstd takes.
    Generator("bookend-uncompressed", "bookend hostonly uncompressed", booted=False),
    Generator("dracut-hostonly", "dracut --hostonly"),
    Generator("dracut-generic", "dracut --no-hostonly"),
    Generator("mkinitramfs-dep", "mkinitramfs MODULES=dep"),
    Generator("mkinitramfs-most", "mkinitramfs MODULES=most"),
)


@dataclass(frozen=True)
class FeatureSet:
    key: str
    label: str
    bookend_args: tuple[str, ...]
    dracut_args: tuple[str, ...]
    crypt_hooks: bool  # copy the cryptsetup-initramfs hooks into mkinitramfs' conf dir
    # Paths (suffixes) that prove an image holds the feature set, per tool family.
    expect_systemd: tuple[str, ...]
    expect_initramfs_tools: tuple[str, ...]
    boot: bool  # whether its images are booted


# What a QEMU guest with a virtio disk and an ext4 root needs, named explicitly for
# every tool: this host's own root disk is not the guest's.
QEMU_MODULES = ("virtio_blk", "virtio_pci", "ext4")
SYSTEMD_INITRD = ("lib/systemd/systemd", "lib/systemd/system/initrd.target")

FEATURE_SETS = (
    FeatureSet(
        key="ext4",
        label="plain ext4 root",
        bookend_args=("--add-module", "virtio_blk", "--add-module", "virtio_pci",
                      "--filesystem", "ext4"),
        dracut_args=("--add-drivers", " ".join(QEMU_MODULES), "--filesystems", "ext4"),
        crypt_hooks=False,
        expect_systemd=SYSTEMD_INITRD,
        expect_initramfs_tools=("init", "virtio_blk.ko"),
        boot=True,
    ),
    FeatureSet(
        key="luks-lvm",
        label="ext4 on LVM on LUKS (features forced)",
        bookend_args=("--add-module", "virtio_blk", "--add-module", "virtio_pci",
                      "--filesystem", "ext4", "--add-feature", "luks", "--add-feature", "lvm"),
        dracut_args=("--add-drivers", " ".join(QEMU_MODULES), "--filesystems", "ext4",
                     "--add", "crypt lvm"),
        crypt_hooks=True,
        expect_systemd=(*SYSTEMD_INITRD, "systemd-cryptsetup", "sbin/lvm"),
        expect_initramfs_tools=("init", "sbin/cryptsetup", "sbin/lvm",
                                "scripts/local-top/cryptroot"),
        boot=False,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Command:
    """One build: what to run, its environment, and the image it writes."""

    argv: tuple[str, ...]
    env: dict[str, str]
    output: Path


@dataclass(frozen=True)
class Setup:
    """Everything the builds share, prepared once per run."""

    kver: str
    zstd_level: int
    work: Path
    dracut_root: Path  # the unpacked dracut packages
    crypt_root: Path  # the unpacked cryptsetup and cryptsetup-initramfs packages


def base_env(work: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(work / "tmp"),
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        # The bookend of this checkout, not an installed one.
        "PYTHONPATH": str(ROOT),
    }


def command_for(generator: str, features: FeatureSet, output: Path, setup: Setup) -> Command:
    tool, mode = generator.split("-", 1)
    if tool == "bookend":
        return bookend_command(mode, features, output, setup)
    if tool == "dracut":
        return dracut_command(mode, features, output, setup)
    return mkinitramfs_command(mode, features, output, setup)


def bookend_command(mode: str, features: FeatureSet, output: Path, setup: Setup) -> Command:
    if mode == "uncompressed":
        argv = bookend_argv(setup.kver, output, None, "hostonly", features.bookend_args)
    else:
        argv = bookend_argv(setup.kver, output, setup.zstd_level, mode, features.bookend_args)
    return Command(argv, base_env(setup.work), output)


def bookend_argv(
    kver: str, output: Path, zstd_level: int | None, mode: str, args: Sequence[str]
) -> tuple[str, ...]:
    """`bookend build` of this checkout (base_env's PYTHONPATH) in mode, zstd at the level
    (None: uncompressed)."""
    compress = ("--compress", "none", "--exitrd-compress", "none") if zstd_level is None else (
        "--compress", "zstd", "--compress-level", str(zstd_level))  # fmt: skip
    return (
        sys.executable, "-m", "bookend", "build", "--kver", kver, "-o", str(output),
        *compress, f"--{mode}", *args,
    )  # fmt: skip


def dracut_command(mode: str, features: FeatureSet, output: Path, setup: Setup) -> Command:
    dracut, dracut_env = unpacked_dracut(setup.dracut_root)
    argv = (
        *dracut,
        "--hostonly" if mode == "hostonly" else "--no-hostonly",
        # The host's own root options (this machine's vda) must not be baked into
        # an image that boots the test disk; root= comes from the command line.
        "--no-hostonly-cmdline",
        "--reproducible", "--force", "--quiet",
        "--tmpdir", str(setup.work / "tmp"),
        "--compress", f"zstd -{setup.zstd_level} -q -T0",
        *features.dracut_args,
        str(output), setup.kver,
    )  # fmt: skip
    return Command(argv, {**base_env(setup.work), **dracut_env}, output)


def mkinitramfs_command(mode: str, features: FeatureSet, output: Path, setup: Setup) -> Command:
    conf = setup.work / "conf" / f"initramfs-tools-{mode}-{features.key}"
    if not conf.exists():
        write_initramfs_conf(conf, mode, features, setup.crypt_root)
    argv = (
        "mkinitramfs", "-d", str(conf), "-c", "zstd", "-l", str(setup.zstd_level),
        "-o", str(output), setup.kver,
    )  # fmt: skip
    return Command(argv, base_env(setup.work), output)


def write_initramfs_conf(conf: Path, mode: str, features: FeatureSet, crypt_root: Path) -> None:
    """A copy of the host's conf dir with MODULES=mode and the guest's modules."""
    shutil.copytree(INITRAMFS_CONF, conf, symlinks=True)
    settings = conf / "initramfs.conf"
    lines = [
        f"MODULES={mode}" if line.startswith("MODULES=") else line
        for line in settings.read_text().splitlines()
    ]
    settings.write_text("\n".join(lines) + "\n")
    with (conf / "modules").open("a") as modules:
        modules.write("".join(f"{name}\n" for name in QEMU_MODULES))
    if features.crypt_hooks:
        add_crypt_hooks(conf, crypt_root)


CRYPT_SCRIPTS = ("local-top/cryptroot", "local-block/cryptroot", "local-bottom/cryptroot")


def add_crypt_hooks(conf: Path, crypt_root: Path) -> None:
    """cryptsetup-initramfs' hook and boot scripts, reading its files from crypt_root.

    The hook runs whether or not /etc/crypttab names a volume (there is none here),
    so having it in the conf dir is what forces cryptsetup into the image. Its
    absolute /lib/cryptsetup paths point into the unpacked package; inside the
    image the files land at their usual paths.
    """
    share = crypt_root / "usr/share/initramfs-tools"
    lib = crypt_root / "lib/cryptsetup"
    hook = (share / "hooks/cryptroot").read_text()
    for old, new in (
        ("copy_file library /lib/cryptsetup/functions",
         f"copy_file library {lib}/functions"),
        (". /lib/cryptsetup/functions", f". {lib}/functions"),
        ("copy_exec /lib/cryptsetup/askpass", f"copy_exec {lib}/askpass /lib/cryptsetup/askpass"),
    ):  # fmt: skip
        if old not in hook:
            raise RuntimeError(f"cryptroot hook: {old!r} not found; the package changed")
        hook = hook.replace(old, new)
    (conf / "hooks").mkdir(exist_ok=True)
    (conf / "hooks/cryptroot").write_text(hook)
    (conf / "hooks/cryptroot").chmod(0o755)
    for script in CRYPT_SCRIPTS:
        target = conf / "scripts" / script
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(share / "scripts" / script, target)


def progress(message: str) -> None:
    """A timestamped line on stderr: the report itself goes to stdout and a file."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_report(text: str, out: Path | None, suffix: str, work: Path) -> None:
    """The report to out (default bench/results/DATE{suffix}.md) and to stdout."""
    out = out or ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    progress(f"report written to {out} (work directory {work})")
    print(text)
