"""What a feature is: a declaration of what it needs in the image.

A feature names executables, units, generators, udev rules, kernel modules and files,
and the other features it builds on. A name starting with "?" is wanted only if the
sysroot has it (e.g. a tool a distribution may not ship); every other name must exist
or the build fails naming it. Code appears only where a feature must compute something
from the configuration: its `compute` returns more requests and generated entries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bookend.archive import ArchiveEntry
from bookend.config import Config


class RequestKind(enum.Enum):
    EXECUTABLE = "executable"  # absolute path, or a name looked up on PATH
    UNIT = "unit"  # systemd unit name; its Exec*= programs follow
    GENERATOR = "generator"  # systemd system generator name
    UDEV_RULES = "udev-rules"  # rules file name; its RUN/PROGRAM/IMPORT programs follow
    MODULE = "module"  # kernel module name or alias; dependencies follow
    DRIVER_CLASS = "driver-class"  # every module of a class in bookend.drivers
    PATH = "path"  # a file or directory at its path; directories are recursed


@dataclass(frozen=True)
class Request:
    """One thing the plan asks the closure to bring in, and who asked."""

    kind: RequestKind
    name: str
    reason: str
    optional: bool = False


@dataclass(frozen=True)
class Generated:
    """An entry bookend writes itself (a file's content, a symlink, a device node)."""

    entry: ArchiveEntry
    reason: str
    # Content as secret as a host secret (a password hash): the image is written 0600.
    secret: bool = False


Contribution = Sequence[Request | Generated]


@dataclass(frozen=True)
class Feature:
    name: str
    help: str
    requires: tuple[str, ...] = ()
    executables: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    generators: tuple[str, ...] = ()
    udev_rules: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    driver_classes: tuple[str, ...] = ()  # whole classes from bookend.drivers
    compute: Callable[[Config], Contribution] | None = None
    # What the feature adds to the exitrd (a step that detaches its storage, its tool).
    exitrd: Callable[[Config], Contribution] | None = None
    # Storage features switch themselves on: in hostonly mode when detection finds this
    # kind under / or /usr, in generic mode when the sysroot has this program.
    storage: str | None = None
    program: str | None = None

    def requests(self) -> list[Request]:
        """The declared names as requests, "?" turned into optional."""
        declared = (
            (RequestKind.EXECUTABLE, self.executables),
            (RequestKind.UNIT, self.units),
            (RequestKind.GENERATOR, self.generators),
            (RequestKind.UDEV_RULES, self.udev_rules),
            (RequestKind.MODULE, self.modules),
            (RequestKind.PATH, self.files),
            (RequestKind.DRIVER_CLASS, self.driver_classes),
        )
        reason = f"feature {self.name}"
        return [
            Request(kind, name.removeprefix("?"), reason, optional=name.startswith("?"))
            for kind, names in declared
            for name in names
        ]
