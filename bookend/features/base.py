"""What a feature is: a declaration of what it needs in the image.

A feature names executables, units, generators, udev rules, kernel modules and files,
and the other features it builds on; what switches it on, the storage kind it serves,
and what the exitrd needs from it. A name starting with "?" is wanted only if the
sysroot has it (e.g. a tool a distribution may not ship); every other name must exist
or the build fails naming it. Code appears only where a feature must compute something
from the configuration or from what hostonly detection found: its `compute` returns
more requests and generated entries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bookend.archive import ArchiveEntry
from bookend.config import Config
from bookend.storage import HostDetection, StorageKind


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


def split_contribution(
    items: Iterable[Request | Generated],
) -> tuple[list[Request], list[Generated]]:
    """The requests and the generated entries of a contribution, each in their order."""
    requests: list[Request] = []
    generated: list[Generated] = []
    for item in items:
        if isinstance(item, Request):
            requests.append(item)
        else:
            generated.append(item)
    return requests, generated


@dataclass(frozen=True)
class FeatureContext:
    """What a feature's compute reads: the configuration, and what hostonly detection
    found (None in generic mode)."""

    config: Config
    detection: HostDetection | None = None

    def command_lines(self) -> tuple[str, str]:
        """The kernel command lines a hostonly image boots with: this machine's (from
        the configured procfs; empty when unreadable) and the UKI's own (or empty)."""
        try:
            host = Path(self.config.procfs, "cmdline").read_text()
        except OSError:
            host = ""
        return host, self.config.cmdline or ""


@dataclass(frozen=True)
class SwitchOn:
    """What switches a feature on, besides `features` naming it and another feature
    requiring it. In hostonly mode, detection finding the storage kind a feature
    serves switches it on too."""

    always: bool = False  # every image has it
    # Config fields: on when any of them is set (true, not None, not empty)
    settings: tuple[str, ...] = ()
    program: str | None = None  # generic mode: on when the sysroot has this program
    # On when this says the image needs the feature, from what it reads in the sysroot
    # and (hostonly) what detection found; e.g. a token enrolled on the root's volume.
    detected: Callable[[FeatureContext], bool] | None = None


# Where systemd-shutdown looks for the executables it runs before the final reboot(2),
# in the running root and again in the exitrd (systemd's SYSTEM_SHUTDOWN_PATH).
SHUTDOWN_HOOK_DIR = "/usr/lib/systemd/system-shutdown"


@dataclass(frozen=True)
class ExitrdPart:
    """What the exitrd needs from a feature the initrd has (or that --exitrd-add-feature
    names): the tools that take its storage down (for systemd-shutdown's hooks or an
    administrator), files, and hooks for systemd-shutdown to run there."""

    executables: tuple[str, ...] = ()  # "?" as in Feature
    files: tuple[ArchiveEntry, ...] = ()  # entries bookend writes
    sysroot_files: tuple[str, ...] = ()  # absolute paths in the sysroot; "?" as in Feature
    # Executables systemd-shutdown runs with the verb as argv[1] from the exitrd's
    # SHUTDOWN_HOOK_DIR once it has unmounted /oldroot (bookend.exitrd):
    # a bare name is that directory's file in the sysroot, an absolute path is taken at
    # its path and linked there. "?" as in Feature.
    shutdown_hooks: tuple[str, ...] = ()
    purpose: str | None = None  # why, in the manifest; by default "storage tools of feature X"
    # What depends on the sysroot or the configuration (a tool's path written into a
    # detach step), computed as Feature.compute is; its items keep their own reasons.
    compute: Callable[[FeatureContext], Contribution] | None = None


def _request(kind: RequestKind, name: str, reason: str) -> Request:
    """A declared name as a request, "?" turned into optional."""
    return Request(kind, name.removeprefix("?"), reason, optional=name.startswith("?"))


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
    compute: Callable[[FeatureContext], Contribution] | None = None
    switch_on: SwitchOn = SwitchOn()
    serves: StorageKind | None = None  # the storage kind it sets up
    exitrd: ExitrdPart | None = None
    # What the finished image says of the feature's work: warnings (one line each) about
    # what may not run, given the image paths of the closure.
    image_warnings: Callable[[FeatureContext, Collection[str]], list[str]] | None = None
    origin: str | None = None  # the file declaring it (bookend.features.datafiles); None: Python
    # One of bookend's own feature files (bookend/data/features.d): its reasons say
    # "feature NAME" alone, as a Python feature's do, so an image does not depend on
    # where bookend is installed.
    shipped: bool = False

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
        return [_request(kind, name, self.reason) for kind, names in declared for name in names]

    @property
    def reason(self) -> str:
        """Why its files are in the image: the feature, and the user's file declaring it."""
        user_file = self.origin if self.origin and not self.shipped else None
        return f"feature {self.name}" + (f" ({user_file})" if user_file else "")

    def exitrd_contribution(self, context: FeatureContext) -> list[Request | Generated]:
        """The exitrd's part of this feature: its files, its executables, its sysroot
        files, then what it computes (its shutdown hooks are bookend.exitrd's)."""
        part = self.exitrd
        if part is None:
            return []
        reason = "exitrd: " + (part.purpose or f"storage tools of feature {self.name}")
        items: list[Request | Generated] = [Generated(e, reason) for e in part.files]
        items += [_request(RequestKind.EXECUTABLE, name, reason) for name in part.executables]
        items += [_request(RequestKind.PATH, name, reason) for name in part.sysroot_files]
        items += part.compute(context) if part.compute else ()
        return items
