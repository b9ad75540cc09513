"""`bookend install-exitrd`: the unit that brings the exitrd into RAM on the running system."""

from __future__ import annotations

import enum
import shlex
import sys
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

from bookend.archive import write_atomically
from bookend.errors import ConfigError
from bookend.features.storage_daemons import DROPIN_NAME, REAL_ROOT_DROPIN

UNIT_NAME = "bookend-exitrd.service"
WANTED_BY = "multi-user.target"


class LoadAt(enum.Enum):
    SHUTDOWN = "shutdown"  # costs no RAM while the system runs (dracut does the same)
    BOOT = "boot"  # ready at once; the exitrd stays in RAM the whole time


def unit_text(image: Path, when: LoadAt, python: str = sys.executable) -> str:
    """The unit file for image, loading at boot or at shutdown."""
    package_dir = Path(__file__).resolve().parent.parent
    load = shlex.join([python, "-m", "bookend", "load-exitrd", "--image", str(image)])
    template = files("bookend").joinpath("data/bookend-exitrd.service.in").read_text()
    values = {
        "@IMAGE_DIR@": str(image.parent),
        "@PYTHONPATH@": str(package_dir),
        "@EXEC_START@": load if when is LoadAt.BOOT else "/bin/true",
        "@EXEC_STOP@": load if when is LoadAt.SHUTDOWN else "",
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template.replace("ExecStop=\n", "")


def install_storage_daemon_dropins(units: list[str], unit_dir: Path) -> list[Path]:
    """Keep the root storage daemons running in the real root until the exitrd."""
    written = []
    for unit in units:
        if "/" in unit or not unit.endswith(".service"):
            raise ConfigError(f"--storage-daemon {unit}: not a service unit name")
        dropin = unit_dir / f"{unit}.d" / DROPIN_NAME
        dropin.parent.mkdir(exist_ok=True)
        data = REAL_ROOT_DROPIN.encode()

        def write(out: BinaryIO, data: bytes = data) -> None:
            out.write(data)

        write_atomically(dropin, write)
        written.append(dropin)
    return written


def install_exitrd_unit(image: Path, when: LoadAt, unit_dir: Path) -> Path:
    """Write the unit into unit_dir and enable it the way systemctl enable would."""
    if not image.is_absolute():
        raise ConfigError(f"--image {image}: must be an absolute path")
    if not image.is_file():
        raise ConfigError(f"--image {image}: no such file")
    if not unit_dir.is_dir():
        raise ConfigError(f"--unit-dir {unit_dir}: no such directory")
    text = unit_text(image, when).encode()
    unit = unit_dir / UNIT_NAME

    def write(out: BinaryIO) -> None:
        out.write(text)

    write_atomically(unit, write)
    wants = unit_dir / f"{WANTED_BY}.wants"
    wants.mkdir(exist_ok=True)
    link = wants / UNIT_NAME
    if not link.is_symlink():
        link.symlink_to(unit)
    return unit
