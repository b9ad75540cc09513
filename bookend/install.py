"""What bookend installs into a system: the unit that brings the exitrd into RAM
(`bookend install-exitrd`) and the kernel hooks that build the images whenever a
kernel is installed (`bookend install-kernel-hooks`)."""

from __future__ import annotations

import enum
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

from bookend.archive import write_atomically
from bookend.errors import ConfigError
from bookend.exitrd_store import LOADER, STORE
from bookend.features.storage_daemons import DROPIN_NAME, real_root_dropin

UNIT_NAME = "bookend-exitrd.service"
WANTED_BY = "multi-user.target"


class LoadAt(enum.Enum):
    SHUTDOWN = "shutdown"  # costs no RAM while the system runs (dracut does the same)
    BOOT = "boot"  # ready at once; the exitrd stays in RAM the whole time


def unit_text(when: LoadAt) -> str:
    """The unit file, copying the exitrd at boot or at shutdown."""
    load = "/" + LOADER
    template = files("bookend").joinpath("data/bookend-exitrd.service.in").read_text()
    values = {
        "@STORE@": "/" + STORE,
        # At shutdown: checked at boot, so that the shutdown only copies (and checks in
        # full only what changed since); a failed check does not fail the unit. The
        # check yields to the boot: nice 19, from the unit's -20 (the copy's, below).
        "@EXEC_START@": load if when is LoadAt.BOOT else f"-nice -n 39 {load} check",
        "@EXEC_STOP@": load if when is LoadAt.SHUTDOWN else "",
        "@TYPE@": "oneshot" if when is LoadAt.BOOT else "exec",
        # The copy at shutdown runs before the other services' stops (the unit's
        # ordering); first in line for the CPU, it also goes ahead of any unit no
        # target orders that stops beside it.
        # (The placeholder's whole line: at boot there is no such line.)
        "@PRIORITY@\n": "Nice=-20\n" if when is LoadAt.SHUTDOWN else "",
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template.replace("ExecStop=\n", "")


def install_storage_daemon_dropins(
    units: list[str], unit_dir: Path, systemd: int | None
) -> list[Path]:
    """Keep the root storage daemons running in the real root until the exitrd.

    systemd: the running system's version (SurviveFinalKillSignal= from 255 on)."""
    written = []
    for unit in units:
        if "/" in unit or not unit.endswith(".service"):
            raise ConfigError(f"--storage-daemon {unit}: not a service unit name")
        dropin = unit_dir / f"{unit}.d" / DROPIN_NAME
        dropin.parent.mkdir(parents=True, exist_ok=True)
        data = real_root_dropin(systemd).encode()

        def write(out: BinaryIO, data: bytes = data) -> None:
            out.write(data)

        write_atomically(dropin, write)
        written.append(dropin)
    return written


def install_exitrd_unit(when: LoadAt, unit_dir: Path) -> Path:
    """Write the unit into unit_dir and enable it the way systemctl enable would; the
    link names the unit as the root sees it (unit_dir under the root is not known here,
    so the link is relative)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    text = unit_text(when).encode()
    unit = unit_dir / UNIT_NAME

    def write(out: BinaryIO) -> None:
        out.write(text)

    write_atomically(unit, write)
    wants = unit_dir / f"{WANTED_BY}.wants"
    wants.mkdir(exist_ok=True)
    link = wants / UNIT_NAME
    if not link.is_symlink():
        link.symlink_to(f"../{UNIT_NAME}")
    return unit


class HookSet(enum.Enum):
    """The two ways a distribution tells an initrd generator about a new kernel."""

    KERNEL_INSTALL = "kernel-install"  # systemd's kernel-install(8) plugins
    DEBIAN = "debian"  # /etc/kernel/postinst.d and postrm.d, run by Debian's kernel packages


@dataclass(frozen=True)
class KernelHook:
    template: str  # in bookend/data
    path: str  # under the root


KERNEL_HOOKS = {
    HookSet.KERNEL_INSTALL: (
        KernelHook("50-bookend.install.in", "etc/kernel/install.d/50-bookend.install"),
    ),
    HookSet.DEBIAN: (
        KernelHook("zz-bookend-postinst.in", "etc/kernel/postinst.d/zz-bookend"),
        KernelHook("zz-bookend-postrm.in", "etc/kernel/postrm.d/zz-bookend"),
    ),
}
# One exitrd serves every kernel (it holds no modules); on the root filesystem it is
# there whenever the running system is, unlike an ESP that may be small or automounted.
DEFAULT_EXITRD = Path("/var/lib/bookend/exitrd.img")
# Debian's kernel-install plugin stages /boot/initrd.img-VERSION too: two initrds
# would be loaded. A symlink to /dev/null in /etc masks it, as for units.
DEBIAN_INITRD_PLUGIN = "85-initrd.install"
PLUGIN_DIR = "etc/kernel/install.d"


def hook_text(
    template: str, exitrd: Path, config: Path | None, python: str = sys.executable
) -> str:
    """A hook script that runs this bookend with this interpreter, whatever PATH holds."""
    package_dir = Path(__file__).resolve().parent.parent
    values = {
        "@PYTHON@": shlex.quote(python),
        "@PYTHONPATH@": shlex.quote(str(package_dir)),
        "@EXITRD@": shlex.quote(str(exitrd)),
        # No --config: bookend's own defaults apply, as for `bookend build` by hand.
        " @CONFIG@": " " + shlex.join(["--config", str(config)]) if config else "",
    }
    text = files("bookend").joinpath(f"data/{template}").read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def install_kernel_hooks(
    root: Path, hook_sets: Sequence[HookSet], exitrd: Path, config: Path | None
) -> list[Path]:
    """Write the hooks under root, mode 0755, each replaced whole or not at all."""
    for name, path in (("--exitrd-output", exitrd), ("--config", config)):
        if path is not None and not path.is_absolute():
            raise ConfigError(f"{name} {path}: must be an absolute path (hooks run anywhere)")
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory")
    written = []
    for hook in (hook for hook_set in hook_sets for hook in KERNEL_HOOKS[hook_set]):
        data = hook_text(hook.template, exitrd, config).encode()
        target = root / hook.path
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(out: BinaryIO, data: bytes = data) -> None:
            out.write(data)

        write_atomically(target, write, 0o755)
        written.append(target)
    if HookSet.KERNEL_INSTALL in hook_sets and _mask_debian_initrd_plugin(root):
        written.append(root / PLUGIN_DIR / DEBIAN_INITRD_PLUGIN)
    return written


def _mask_debian_initrd_plugin(root: Path) -> bool:
    mask = root / PLUGIN_DIR / DEBIAN_INITRD_PLUGIN
    shipped = root / "usr/lib/kernel/install.d" / DEBIAN_INITRD_PLUGIN
    if not shipped.exists() or mask.is_symlink() or mask.exists():
        return False  # nothing to mask, or the administrator already decided
    mask.symlink_to("/dev/null")
    return True


def remove_kernel_hooks(root: Path, hook_sets: Sequence[HookSet]) -> list[Path]:
    """Remove the hooks (and the mask bookend set up); return what was there."""
    removed = []
    for hook in (hook for hook_set in hook_sets for hook in KERNEL_HOOKS[hook_set]):
        target = root / hook.path
        if target.exists():
            target.unlink()
            removed.append(target)
    mask = root / PLUGIN_DIR / DEBIAN_INITRD_PLUGIN
    ours = mask.is_symlink() and os.readlink(mask) == "/dev/null"
    if HookSet.KERNEL_INSTALL in hook_sets and ours:
        mask.unlink()
        removed.append(mask)
    return removed


def initramfs_tools_note(root: Path) -> str | None:
    """What an administrator must change so initramfs-tools stops replacing our initrd."""
    if not (root / "usr/sbin/update-initramfs").exists():
        return None
    conf = root / "etc/initramfs-tools/update-initramfs.conf"
    settings = conf.read_text() if conf.is_file() else ""
    if re.search(r"^\s*update_initramfs\s*=\s*no\s*$", settings, re.MULTILINE):
        return None
    return (
        "initramfs-tools is installed: its triggers (`update-initramfs -u`) will replace "
        f"bookend's /boot/initrd.img-*; set update_initramfs=no in {conf} to stop them"
    )
