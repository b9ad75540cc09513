"""Features as data: TOML files declaring a feature in bookend's own terms, no Python.

A file NAME.toml in a feature directory declares the feature NAME: what it brings
(`executables`, `units`, `generators`, `udev_rules`, `modules`, `files`,
`driver_classes`, `requires`; a "?" before a name makes it wanted only where the sysroot
has it; a udev rules name "@PURPOSE" is whatever file serves that purpose in the sysroot,
bookend.udevrules), the storage kind it sets up (`serves`: hostonly detection finding that kind
switches it on), what else switches it on (`[switch_on]`: `always`, `settings`,
`program`) and what the exitrd needs from it (`[exitrd]`: `executables`, `files`,
`shutdown_hooks`, `purpose`). Its `units` come as `--add-unit` brings a unit: with what
they run and need, enabled per their [Install] section or for the TARGET of
`UNIT:TARGET`.

Some of bookend's own features are such files (bookend/data/features.d, SHIPPED_DIR):
the lowest layer. Then the directories are read as configuration drop-ins are
(bookend.config.sources): usr/lib, etc and run under the configuration root, then each
--feature-dir; a name in a later one masks the same name in an earlier one, a shipped
feature's too, and an empty file (or a link to /dev/null) masks without declaring
anything. A feature written in Python cannot be replaced. Every problem, of every file,
is one `FILE: key: message` line, reported together before anything is planned.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bookend.config import SETTINGS_BY_KEY, Problems
from bookend.config.sources import describe, masked_toml_files, read_toml
from bookend.config.table import UNIT_ITEM, parse_unit_item
from bookend.drivers import DRIVER_CLASSES
from bookend.errors import ConfigError
from bookend.features.base import (
    SHUTDOWN_HOOK_DIR,
    Contribution,
    ExitrdPart,
    Feature,
    FeatureContext,
    Generated,
    Request,
    SwitchOn,
)
from bookend.features.units import unit_contribution, unit_warnings
from bookend.storage import StorageKind
from bookend.suggest import did_you_mean
from bookend.sysroot import Sysroot
from bookend.udevrules import PURPOSE_PREFIX, PURPOSES
from bookend.units import find_unit

# bookend's own feature files, inside the package: a real directory in every install
# bookend supports (a wheel unpacked into site-packages, a checkout, a distribution
# package), which masked_toml_files lists as it lists the others.
SHIPPED_DIR = Path(str(resources.files("bookend").joinpath("data", "features.d")))
FEATURE_DIRS = ("usr/lib/bookend/features.d", "etc/bookend/features.d", "run/bookend/features.d")
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
# Reports a problem with a key (dotted inside a table) of the file being read.
Bad = Callable[[str, str], None]
LIST_KEYS = (
    *("requires", "executables", "units", "generators", "udev_rules", "modules", "files"),
    "driver_classes",
)
TABLE_KEYS = {
    "": ("help", *LIST_KEYS, "serves", "switch_on", "exitrd"),
    "switch_on.": ("always", "settings", "program"),
    "exitrd.": ("executables", "files", "shutdown_hooks", "purpose"),
}


def find_feature_files(
    config_root: Path, feature_dirs: Sequence[Path], problems: Problems
) -> list[Path]:
    """The users' *.toml files that declare features, masking applied, in name order."""
    directories = [*(config_root / d for d in FEATURE_DIRS), *feature_dirs]
    return masked_toml_files(directories, problems, required=feature_dirs)


def shipped_features() -> dict[str, Feature]:
    """bookend's own feature files, by name; a bad one is a ConfigError (a broken install)."""
    problems = Problems()
    found: dict[str, Feature] = {}
    for path in masked_toml_files([SHIPPED_DIR], problems, required=[SHIPPED_DIR]):
        name = path.name.removesuffix(".toml")
        feature = parse_feature(name, path, read_toml(path, problems) or {}, problems, shipped=True)
        if feature is not None:
            found[name] = feature
    problems.raise_if_any()
    return found


def load_features(
    config_root: Path, feature_dirs: Sequence[Path], builtin: Mapping[str, Feature]
) -> dict[str, Feature]:
    """bookend's own features and those the feature files declare, a shipped feature
    replaced or masked by a user's file of its name; ConfigError naming every bad file
    and key."""
    problems = Problems()
    registry = dict(builtin)  # a replaced feature keeps its place: the plan's order
    masked: dict[str, Path] = {}
    for path in find_feature_files(config_root, feature_dirs, problems):
        name = path.name.removesuffix(".toml")
        if not NAME.fullmatch(name):
            problems.add_file(path, f"'{name}' is not a feature name (a-z, 0-9 and '-')")
        elif name in builtin and not builtin[name].shipped:
            problems.add_file(
                path, f"'{name}' is one of bookend's own features, in Python; name it otherwise"
            )
        else:
            table = read_toml(path, problems)
            if table == {} and name in registry:  # an empty file masks
                del registry[name]
                masked[name] = path
            elif table:
                feature = parse_feature(name, path, table, problems)
                if feature is not None:
                    registry[name] = feature
    _check_requires(registry, masked, problems)
    problems.raise_if_any()
    return registry


def _check_requires(
    registry: Mapping[str, Feature], masked: Mapping[str, Path], problems: Problems
) -> None:
    """Every required feature is there: an unknown name is its file's problem, a masked
    one the masking file's."""
    needed_by: dict[str, list[str]] = {}
    for feature in registry.values():
        for required in feature.requires:
            if required in registry:
                continue
            if required in masked:
                needed_by.setdefault(required, []).append(feature.name)
            elif feature.origin and not feature.shipped:
                message = f"unknown feature '{required}'" + did_you_mean(required, list(registry))
                problems.add(feature.origin, "requires", message)
    for name, dependents in needed_by.items():
        problems.add_file(
            masked[name], f"masks feature '{name}', which {', '.join(dependents)} require"
        )


def parse_feature(
    name: str, path: Path, table: Mapping[str, Any], problems: Problems, *, shipped: bool = False
) -> Feature | None:
    """The Feature a file's table declares, or None with its problems added; shipped:
    one of bookend's own (SHIPPED_DIR)."""
    before = len(problems.messages)

    def bad(key: str, message: str) -> None:
        problems.add(str(path), key, message)

    _unknown_keys(table, "", bad)
    help_text = table.get("help")
    if not isinstance(help_text, str) or not help_text.strip():
        bad("help", f"expected a string saying what the feature brings, not {_got(help_text)}")
    lists = {key: _strings(table, key, "", bad) for key in LIST_KEYS}
    _check_names(lists, bad)
    units = _units(lists["units"], bad)
    serves = _serves(table.get("serves"), bad)
    switch_on = _switch_on(_table(table, "switch_on", bad), bad)
    exitrd = _exitrd(_table(table, "exitrd", bad), bad) if "exitrd" in table else None
    if len(problems.messages) > before:
        return None
    feature = Feature(
        name=name,
        help=str(help_text),
        requires=tuple(lists["requires"]),
        executables=tuple(lists["executables"]),
        generators=tuple(lists["generators"]),
        udev_rules=tuple(lists["udev_rules"]),
        modules=tuple(lists["modules"]),
        files=tuple(lists["files"]),
        driver_classes=tuple(lists["driver_classes"]),
        switch_on=switch_on,
        serves=serves,
        exitrd=exitrd,
        origin=str(path),
        shipped=shipped,
    )
    if not units:
        return feature
    # The reason names the feature (and the user's file): FeatureUnits reads it back.
    declared = FeatureUnits(units, feature.reason, str(path))
    return dataclasses.replace(feature, compute=declared, image_warnings=declared.warnings)


@dataclass(frozen=True)
class FeatureUnits:
    """A feature file's units, each brought as --add-unit brings one (bookend.features.
    units): with the units it needs, the files it reads and the link that enables it,
    for the reason `feature NAME (FILE): UNIT`."""

    units: tuple[tuple[str, str | None, bool], ...]  # (unit, target or None, optional)
    reason: str  # the feature's
    origin: str  # the file, for errors

    def present(self, sysroot: Sysroot) -> list[tuple[str, str | None, str]]:
        """(unit, target, reason) of each unit the sysroot has, the optional ones left
        out where it lacks them; ConfigError naming the file for any other."""
        found = []
        for unit, target, optional in self.units:
            if find_unit(sysroot, unit) is not None:
                found.append((unit, target, f"{self.reason}: {unit}"))
            elif not optional:
                raise ConfigError(
                    f"{self.origin}: units: no unit '{unit}' in the sysroot {sysroot.root} "
                    f"(a '?' before the name makes it wanted only where there is one)"
                )
        return found

    def __call__(self, context: FeatureContext) -> Contribution:
        sysroot = Sysroot(context.config.sysroot)
        items: list[Request | Generated] = []
        for unit, target, reason in self.present(sysroot):
            items += unit_contribution(sysroot, unit, target, reason)
        return items

    def warnings(self, context: FeatureContext, image_paths: Collection[str]) -> list[str]:
        """Why each of its units may not start in the finished image, one line each."""
        sysroot = Sysroot(context.config.sysroot)
        return unit_warnings(sysroot, self.present(sysroot), image_paths)


def _got(value: Any) -> str:
    return "nothing" if value is None else describe(value)


def _unknown_keys(table: Mapping[str, Any], prefix: str, bad: Bad) -> None:
    allowed = TABLE_KEYS[prefix]
    for key in table:
        if key not in allowed:
            bad(prefix + key, "unknown key" + did_you_mean(key, allowed))


def _table(table: Mapping[str, Any], key: str, bad: Bad) -> dict[str, Any]:
    value = table.get(key, {})
    if isinstance(value, dict):
        _unknown_keys(value, key + ".", bad)
        return value
    bad(key, f"expected a table, not {_got(value)}")
    return {}


def _strings(table: Mapping[str, Any], key: str, prefix: str, bad: Bad) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return value
    bad(prefix + key, f"expected a list of names, not {_got(value)}")
    return []


def _check_names(lists: Mapping[str, list[str]], bad: Bad) -> None:
    for name in lists["files"]:
        if not name.removeprefix("?").startswith("/"):
            bad("files", f"'{name}' is not an absolute path")
    for name in lists["driver_classes"]:
        if name not in DRIVER_CLASSES:
            bad(
                "driver_classes",
                f"unknown driver class '{name}'" + did_you_mean(name, sorted(DRIVER_CLASSES)),
            )
    for name in lists["udev_rules"]:
        bare = name.removeprefix("?")
        purpose = bare.removeprefix(PURPOSE_PREFIX)
        if bare.startswith(PURPOSE_PREFIX) and purpose not in PURPOSES:
            known = sorted(PURPOSE_PREFIX + key for key in PURPOSES)
            bad("udev_rules", f"unknown purpose '{bare}'" + did_you_mean(bare, known))


def _units(names: Sequence[str], bad: Bad) -> tuple[tuple[str, str | None, bool], ...]:
    """units as (unit, target or None, optional): UNIT[:TARGET], as --add-unit takes them."""
    found = []
    for name in names:
        item = name.removeprefix("?")
        if not re.fullmatch(UNIT_ITEM, item):
            bad("units", f"'{name}' is not UNIT[:TARGET], such as foo.service:initrd.target")
            continue
        unit, target = parse_unit_item(item)
        found.append((unit, target, name.startswith("?")))
    return tuple(found)


def _serves(value: Any, bad: Bad) -> StorageKind | None:
    if value is None:
        return None
    kinds = [kind.value for kind in StorageKind]
    if isinstance(value, str) and value in kinds:
        return StorageKind(value)
    if isinstance(value, str):
        bad("serves", f"unknown storage kind '{value}'" + did_you_mean(value, kinds))
    else:
        bad("serves", f"expected a storage kind ({', '.join(kinds)}), not {_got(value)}")
    return None


def _switch_on(table: Mapping[str, Any], bad: Bad) -> SwitchOn:
    always = table.get("always", False)
    if not isinstance(always, bool):
        bad("switch_on.always", f"expected true or false, not {_got(always)}")
        always = False
    settings = _strings(table, "settings", "switch_on.", bad)
    for key in settings:
        if key not in SETTINGS_BY_KEY:
            bad(
                "switch_on.settings",
                f"unknown setting '{key}'" + did_you_mean(key, sorted(SETTINGS_BY_KEY)),
            )
    program = table.get("program")
    if program is not None and not (isinstance(program, str) and program.startswith("/")):
        bad("switch_on.program", f"expected an absolute path, not {_got(program)}")
        program = None
    return SwitchOn(always=always, settings=tuple(settings), program=program)


def _exitrd(table: Mapping[str, Any], bad: Bad) -> ExitrdPart:
    purpose = table.get("purpose")
    if purpose is not None and not isinstance(purpose, str):
        bad("exitrd.purpose", f"expected a string, not {_got(purpose)}")
        purpose = None
    executables = _strings(table, "executables", "exitrd.", bad)
    files = _strings(table, "files", "exitrd.", bad)
    for name in files:
        if not name.removeprefix("?").startswith("/"):
            bad("exitrd.files", f"'{name}' is not an absolute path")
    hooks = _strings(table, "shutdown_hooks", "exitrd.", bad)
    for name in hooks:
        bare = name.removeprefix("?")
        if not bare.startswith("/") and ("/" in bare or bare in (".", "..")):
            message = f"'{name}' is neither a file name in {SHUTDOWN_HOOK_DIR} nor an absolute path"
            bad("exitrd.shutdown_hooks", message)
    return ExitrdPart(
        executables=tuple(executables),
        sysroot_files=tuple(files),
        shutdown_hooks=tuple(hooks),
        purpose=purpose,
    )
