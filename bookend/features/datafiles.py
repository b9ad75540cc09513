"""Features as data: TOML files declaring a feature in bookend's own terms, no Python.

A file NAME.toml in a feature directory declares the feature NAME: what it brings
(`executables`, `units`, `generators`, `udev_rules`, `modules`, `files`,
`driver_classes`, `requires`; a "?" before a name makes it wanted only where the sysroot
has it), what switches it on (`[switch_on]`: `always`, `settings`, `program`) and what
the exitrd needs from it (`[exitrd]`: `executables`, `files`, `shutdown_hooks`,
`purpose`). The directories are
read as configuration drop-ins are (bookend.config.sources): usr/lib, etc and run under
the configuration root, then each --feature-dir; a name in a later one masks the same
name in an earlier one, and an empty file (or a link to /dev/null) masks without
declaring anything. Every problem, of every file, is one `FILE: key: message` line,
reported together before anything is planned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bookend.config import SETTINGS_BY_KEY, Problems
from bookend.config.sources import describe, masked_toml_files, read_toml
from bookend.drivers import DRIVER_CLASSES
from bookend.features.base import SHUTDOWN_HOOK_DIR, ExitrdPart, Feature, SwitchOn
from bookend.suggest import did_you_mean

FEATURE_DIRS = ("usr/lib/bookend/features.d", "etc/bookend/features.d", "run/bookend/features.d")
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
# Reports a problem with a key (dotted inside a table) of the file being read.
Bad = Callable[[str, str], None]
LIST_KEYS = (
    *("requires", "executables", "units", "generators", "udev_rules", "modules", "files"),
    "driver_classes",
)
TABLE_KEYS = {
    "": ("help", *LIST_KEYS, "switch_on", "exitrd"),
    "switch_on.": ("always", "settings", "program"),
    "exitrd.": ("executables", "files", "shutdown_hooks", "purpose"),
}


def find_feature_files(
    config_root: Path, feature_dirs: Sequence[Path], problems: Problems
) -> list[Path]:
    """The *.toml files that declare features, masking applied, in name order."""
    directories = [*(config_root / d for d in FEATURE_DIRS), *feature_dirs]
    return masked_toml_files(directories, problems, required=feature_dirs)


def load_features(
    config_root: Path, feature_dirs: Sequence[Path], builtin: Mapping[str, Feature]
) -> dict[str, Feature]:
    """bookend's own features and those the feature files declare; ConfigError naming
    every bad file and key."""
    problems = Problems()
    declared: dict[str, Feature] = {}
    for path in find_feature_files(config_root, feature_dirs, problems):
        name = path.name.removesuffix(".toml")
        if not NAME.fullmatch(name):
            problems.add_file(path, f"'{name}' is not a feature name (a-z, 0-9 and '-')")
        elif name in builtin:
            problems.add_file(path, f"'{name}' is one of bookend's own features; name it otherwise")
        else:
            table = read_toml(path, problems)
            feature = parse_feature(name, path, table, problems) if table else None
            if feature is not None:
                declared[name] = feature
    known = [*builtin, *declared]
    for feature in declared.values():
        for required in feature.requires:
            if required not in known:
                message = f"unknown feature '{required}'" + did_you_mean(required, known)
                problems.add(str(feature.origin), "requires", message)
    problems.raise_if_any()
    return {**builtin, **declared}


def parse_feature(
    name: str, path: Path, table: Mapping[str, Any], problems: Problems
) -> Feature | None:
    """The Feature a file's table declares, or None with its problems added."""
    before = len(problems.messages)

    def bad(key: str, message: str) -> None:
        problems.add(str(path), key, message)

    _unknown_keys(table, "", bad)
    help_text = table.get("help")
    if not isinstance(help_text, str) or not help_text.strip():
        bad("help", f"expected a string saying what the feature brings, not {_got(help_text)}")
    lists = {key: _strings(table, key, "", bad) for key in LIST_KEYS}
    _check_names(lists, bad)
    switch_on = _switch_on(_table(table, "switch_on", bad), bad)
    exitrd = _exitrd(_table(table, "exitrd", bad), bad) if "exitrd" in table else None
    if len(problems.messages) > before:
        return None
    return Feature(
        name=name,
        help=str(help_text),
        requires=tuple(lists["requires"]),
        executables=tuple(lists["executables"]),
        units=tuple(lists["units"]),
        generators=tuple(lists["generators"]),
        udev_rules=tuple(lists["udev_rules"]),
        modules=tuple(lists["modules"]),
        files=tuple(lists["files"]),
        driver_classes=tuple(lists["driver_classes"]),
        switch_on=switch_on,
        exitrd=exitrd,
        origin=str(path),
    )


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
