"""Units: the user's own units from the sysroot, in the initrd with what they need.

Each configured unit (`units`, `--add-unit UNIT[:TARGET]`) comes with its closure: the
closure follows a unit request to its drop-ins and the programs of its Exec*= lines
(looked up on systemd's search path); here come the units it Requires=, Wants= or
BindsTo= that the sysroot has (and theirs, in turn), the files its EnvironmentFile=
and ConditionPath*= lines name, and the link that enables it: for TARGET when given,
else for each target of its [Install] WantedBy=/RequiredBy=. Everything carries the
reason `units (ORIGIN): UNIT`, so `bookend why` names the setting and the unit.

A unit written for the running system may still not start in the initrd; the finished
image is read for why (default dependencies, ordering after units the image lacks, a
target the image lacks) and each reason is a warning, not an error: the user asked.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Collection
from dataclasses import dataclass

from bookend.archive import ArchiveEntry, EntryKind
from bookend.errors import SysrootError
from bookend.features.base import (
    Contribution,
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    SwitchOn,
)
from bookend.sysroot import Sysroot
from bookend.units import UNIT_DIRS, dropin_paths, find_unit, logical_lines

LINK_DIR = "/etc/systemd/system"
DEPENDENCY_KEYS = ("Requires", "Wants", "BindsTo")
# Keys whose value is one path the unit looks at before it starts (an "Assert" fails
# the start where a "Condition" skips it: either way the file decides).
CONDITION_KEYS = re.compile(
    r"(Condition|Assert)(Path(Exists|IsDirectory|IsSymbolicLink|IsMountPoint|IsReadWrite"
    r"|IsEncrypted)|DirectoryNotEmpty|FileNotEmpty|FileIsExecutable)"
)
# Filled at run time by the kernel and systemd: nothing of the sysroot's belongs there.
RUNTIME_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/")
# Unit kinds that come from generators or the manager itself, never from a unit file.
BUILT_AT_RUN_TIME = (".device", ".mount", ".swap", ".slice", ".scope", ".automount")


@dataclass(frozen=True)
class UnitText:
    """A unit's settings as systemd reads them: its file, then its drop-ins."""

    path: str  # the unit file's image path
    lines: tuple[tuple[str, str], ...]  # (key, value), sections dropped, in order

    def values(self, key: str) -> list[str]:
        """Every value of key, an empty one resetting the list as systemd does."""
        found: list[str] = []
        for name, value in self.lines:
            if name == key:
                found = [] if not value else [*found, value]
        return found

    def words(self, key: str) -> list[str]:
        return [word for value in self.values(key) for word in value.split()]

    def last(self, key: str) -> str | None:
        values = self.values(key)
        return values[-1] if values else None


def read_unit(sysroot: Sysroot, name: str) -> UnitText | None:
    """The unit's file and drop-ins (its template's too, for an instance) as settings."""
    path = find_unit(sysroot, name)
    if path is None:
        return None
    sources = [path, *dropin_paths(sysroot, name)]
    lines: list[tuple[str, str]] = []
    for source in sources:
        text = sysroot.read_text(source)
        if text is None:
            raise SysrootError(f"{sysroot.host_path(source)}: cannot read unit file")
        lines += _settings(text)
    return UnitText(path, tuple(lines))


def _settings(text: str) -> list[tuple[str, str]]:
    found = []
    for line in logical_lines(text):
        key, sep, value = line.partition("=")
        if sep and not line.startswith("["):
            found.append((key.strip(), value.strip()))
    return found


def install_section(sysroot: Sysroot, path: str) -> list[tuple[str, str]]:
    """(key, value) of the unit file's own [Install] section (drop-ins do not enable)."""
    section = ""
    found = []
    for line in logical_lines(sysroot.read_text(path) or ""):
        if line.startswith("["):
            section = line
        elif section == "[Install]" and "=" in line:
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def install_links(sysroot: Sysroot, unit: str, path: str, target: str | None) -> list[str]:
    """The links that enable unit: TARGET.wants/UNIT, or per its [Install] section.

    A template named without an instance (foo@.service) is enabled as its
    DefaultInstance=, as systemctl enable does; without one, nothing could start it.
    """
    install = install_section(sysroot, path)
    name = _instance_name(unit, install)
    if name is None:
        return []
    if target is not None:
        return [f"{LINK_DIR}/{target}.wants/{name}"]
    links = []
    for key, value in install:
        kind = {"WantedBy": "wants", "RequiredBy": "requires"}.get(key)
        if kind:
            links += [f"{LINK_DIR}/{word}.{kind}/{name}" for word in value.split()]
    return links


def _instance_name(unit: str, install: list[tuple[str, str]]) -> str | None:
    """The name unit is started by: itself, or a bare template's default instance."""
    template = re.fullmatch(r"(.+@)(\.[^.]+)", unit)
    if template is None:
        return unit
    defaults = [value for key, value in install if key == "DefaultInstance" and value]
    return f"{template.group(1)}{defaults[-1]}{template.group(2)}" if defaults else None


def dependencies(sysroot: Sysroot, unit: str) -> list[str]:
    """The units unit needs that the sysroot has, and theirs, in the order found."""
    seen = {unit}
    queue = [unit]
    found = []
    while queue:
        text = read_unit(sysroot, queue.pop(0))
        if text is None:
            continue
        for key in DEPENDENCY_KEYS:
            for name in text.words(key):
                if name in seen or "%" in name or find_unit(sysroot, name) is None:
                    continue
                seen.add(name)
                found.append(name)
                queue.append(name)
    return found


def named_files(text: UnitText) -> list[tuple[str, bool]]:
    """(path, optional) of what the unit reads before it runs: EnvironmentFile= ("-":
    optional) and the paths of its conditions (always optional: where they exist)."""
    found = []
    for value in text.values("EnvironmentFile"):
        optional = value.startswith("-")
        found.append((value.removeprefix("-"), optional))
    for key, value in text.lines:
        if not CONDITION_KEYS.fullmatch(key):
            continue
        value = value.lstrip("|")
        if value.startswith("!"):
            continue  # true only where the path is missing: bringing it would flip it
        found.append((value, True))
    return [
        (path, optional)
        for path, optional in found
        if path.startswith("/") and "%" not in path and not path.startswith(RUNTIME_PREFIXES)
    ]


def unit_contribution(
    sysroot: Sysroot, unit: str, target: str | None, reason: str
) -> list[Request | Generated]:
    """The unit, what it needs and the links that enable it, all for reason."""
    path = find_unit(sysroot, unit)
    if path is None:  # resolve checked it; only a sysroot changed since can get here
        raise SysrootError(f"{reason}: unit not found in {sysroot.root}")
    items: list[Request | Generated] = [Request(RequestKind.UNIT, unit, reason)]
    for name in [unit, *dependencies(sysroot, unit)]:
        if name != unit:
            items.append(Request(RequestKind.UNIT, name, reason))
        text = read_unit(sysroot, name)
        for file, optional in named_files(text) if text else ():
            items.append(_file_item(sysroot, file, optional, reason))
    for link in install_links(sysroot, unit, path, target):
        entry = ArchiveEntry(link, EntryKind.SYMLINK, 0o777, target=path)
        items.append(Generated(entry, reason))
    return items


def _file_item(sysroot: Sysroot, path: str, optional: bool, reason: str) -> Request | Generated:
    """A named file as it is; a directory alone (a condition asks only that it is one)."""
    st = sysroot.resolve(path).st
    if st is not None and stat.S_ISDIR(st.st_mode):
        mode = stat.S_IMODE(st.st_mode)
        return Generated(ArchiveEntry(path, EntryKind.DIRECTORY, mode), reason)
    return Request(RequestKind.PATH, path, reason, optional=optional)


def _units(context: FeatureContext) -> Contribution:
    config = context.config
    sysroot = Sysroot(config.sysroot)
    items: list[Request | Generated] = []
    for index, (unit, target) in enumerate(config.units):
        reason = f"units ({config.origin_of('units', index)}): {unit}"
        items += unit_contribution(sysroot, unit, target, reason)
    return items


def start_warnings(context: FeatureContext, image_paths: Collection[str]) -> list[str]:
    """Why each configured unit may not start in the finished image, one line each."""
    config = context.config
    items = [
        (unit, target, f"units ({config.origin_of('units', index)}): {unit}")
        for index, (unit, target) in enumerate(config.units)
    ]
    return unit_warnings(Sysroot(config.sysroot), items, image_paths)


def unit_warnings(
    sysroot: Sysroot, items: Collection[tuple[str, str | None, str]], image_paths: Collection[str]
) -> list[str]:
    """Why each (unit, target, reason) may not start in the finished image, one line
    each, starting with its reason."""
    in_image = {
        name
        for directory, _, name in (p.rpartition("/") for p in image_paths)
        if directory in UNIT_DIRS
    }
    warnings = []
    for unit, target, where in items:
        text = read_unit(sysroot, unit)
        if text is None:
            continue
        warnings += [f"{where}: {why}" for why in _why_not(sysroot, unit, target, text, in_image)]
    return warnings


def _why_not(
    sysroot: Sysroot, unit: str, target: str | None, text: UnitText, in_image: set[str]
) -> list[str]:
    def has(name: str) -> bool:  # an instance is there when its template is
        return name in in_image or re.sub(r"@[^.]+\.", "@.", name) in in_image

    reasons = []
    if (text.last("DefaultDependencies") or "yes").lower() not in ("no", "false", "0", "off"):
        reasons.append(
            "has default dependencies (no DefaultDependencies=no): it waits for "
            "sysinit.target and basic.target, and switch-root stops it, so it may not "
            "start or finish in the initrd"
        )
    lacking = [
        name
        for name in dict.fromkeys(text.words("After"))
        if not name.endswith(BUILT_AT_RUN_TIME) and "%" not in name and not has(name)
    ]
    if lacking:
        reasons.append(
            f"ordered after {', '.join(lacking)}, which the initrd lacks: "
            "it may start before what it expects"
        )
    links = install_links(sysroot, unit, text.path, target)
    install = install_section(sysroot, text.path)
    if _instance_name(unit, install) is None:
        reasons.append(
            "not enabled: a template without an instance or DefaultInstance=; "
            "name an instance, e.g. " + unit.replace("@.", "@NAME.")
        )
    elif not links:
        reasons.append(
            "not enabled: its [Install] section names no WantedBy=/RequiredBy=; "
            "give a target as UNIT:TARGET (e.g. initrd.target)"
        )
    for link in links:
        wanted_by = link.rsplit("/", 2)[-2].rsplit(".", 1)[0]
        if not has(wanted_by):
            reasons.append(
                f"enabled for {wanted_by}, which the initrd lacks, so nothing starts it; "
                "give a target as UNIT:TARGET (e.g. initrd.target)"
            )
    return reasons


FEATURE = Feature(
    name="units",
    help="the sysroot's units named by units (--add-unit), with what they run and need",
    compute=_units,
    switch_on=SwitchOn(settings=("units",)),
    image_warnings=start_warnings,
)
