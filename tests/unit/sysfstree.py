"""Fake /sys and /proc trees for hostonly detection: only the files detection reads.

Symlinks are relative and stay inside the fixture, as the kernel's own do inside /sys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def relative_link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


class FakeHost:
    """A sysfs under root/sys and a procfs under root/proc holding self/mountinfo."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        (self.sys / "devices").mkdir(parents=True)
        (self.sys / "dev/block").mkdir(parents=True)
        (self.proc / "self").mkdir(parents=True)
        # Mounts detection must skip: they share no point with / or /usr.
        self.lines = [
            "22 27 0:21 / /proc rw,relatime - proc proc rw",
            "23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw",
        ]

    def device(
        self,
        path: str,
        modalias: str | None = None,
        driver: str | None = None,
        module: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> Path:
        """A directory under devices/, made once; a driver with module=None is built in."""
        directory = self.sys / "devices" / path
        directory.mkdir(parents=True, exist_ok=True)
        if modalias is not None:
            (directory / "modalias").write_text(modalias + "\n")
        if driver is not None and not (directory / "driver").is_symlink():
            driver_dir = self.sys / "bus/fixture/drivers" / driver
            driver_dir.mkdir(parents=True, exist_ok=True)
            relative_link(directory / "driver", driver_dir)
            if module is not None and not (driver_dir / "module").is_symlink():
                (self.sys / "module" / module).mkdir(parents=True, exist_ok=True)
                relative_link(driver_dir / "module", self.sys / "module" / module)
        for name, value in (attributes or {}).items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(value + "\n")
        return directory

    def block(
        self,
        path: str,
        majmin: str,
        slaves: Iterable[Path] = (),
        attributes: dict[str, str] | None = None,
    ) -> Path:
        """A block device with its dev file, /sys/dev/block link and slaves/ links."""
        directory = self.device(path, attributes={"dev": majmin, **(attributes or {})})
        relative_link(self.sys / "dev/block" / majmin, directory)
        (directory / "slaves").mkdir(exist_ok=True)
        for slave in slaves:
            relative_link(directory / "slaves" / slave.name, slave)
        return directory

    def mount(self, point: str, majmin: str, fstype: str, source: str, options: str = "rw") -> None:
        """A mountinfo line; options are the superblock's (the last field)."""
        escaped = point.replace(" ", "\\040")
        number = 30 + len(self.lines)
        line = f"{number} 1 {majmin} / {escaped} rw,relatime - {fstype} {source} {options}"
        self.lines.append(line)
        (self.proc / "self/mountinfo").write_text("".join(f"{line}\n" for line in self.lines))

    def interface(
        self, name: str, device: str | None, flags: str = "0x1003", lower: Iterable[str] = ()
    ) -> Path:
        """/sys/class/net/NAME: under devices/DEVICE/net/ with a device link, or under
        devices/virtual/net/ without one (lo, a bond); lower_* links to the interfaces
        under it, as a bond, VLAN or bridge has them."""
        parent = self.sys / "devices" / (device or "virtual") / "net"
        directory = parent / name
        directory.mkdir(parents=True)
        (directory / "flags").write_text(flags + "\n")
        if device is not None:
            relative_link(directory / "device", self.sys / "devices" / device)
        relative_link(self.sys / "class/net" / name, directory)
        for below in lower:
            target = Path(os.path.realpath(self.sys / "class/net" / below))
            relative_link(directory / f"lower_{below}", target)
        return directory

    def proc_file(self, relative: str, text: str) -> None:
        """A file under the fake /proc, e.g. net/route."""
        path = self.proc / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
