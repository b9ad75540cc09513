"""Where configuration comes from, and how the layers merge: the drop-in directories,
TOML files, the command line.

Reading collects problems instead of stopping at the first, so the user sees every
broken file at once. A scalar takes the last layer's value; a list appends each
layer's items, and an empty list drops what came before. Each value is checked
against its setting's TOML type here; what the values mean is bookend.config.checks'.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.config.table import SETTINGS, SETTINGS_BY_KEY, Setting
from bookend.errors import ConfigError
from bookend.suggest import did_you_mean

log = logging.getLogger(__name__)

# Drop-in directories, lowest precedence first, as systemd orders its own: the
# distribution's defaults, the administrator's, and the runtime's (generated, volatile).
# A file in a later directory masks the file of the same name in an earlier one.
CONF_DIRS = ("usr/lib/bookend/conf.d", "etc/bookend/conf.d", "run/bookend/conf.d")
COMMAND_LINE = "command line"


@dataclass
class Problems:
    """Every problem found, so the user sees them all at once."""

    messages: list[str] = field(default_factory=list)

    def add(self, source: str, key: str, message: str) -> None:
        self.messages.append(f"{source}: {key}: {message}")

    def add_file(self, path: Path, message: str) -> None:
        """A problem with a whole file, before any key could be read from it."""
        self.messages.append(f"{path}: {message}")

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("; ".join(self.messages))


def describe(value: Any) -> str:
    """A TOML value as the user wrote it, short: 'the string "x"', 'a table'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {short(value)!r}"
    if isinstance(value, int | float):
        return f"the number {short(str(value))}"
    return f"a {type(value).__name__} value"  # TOML dates and times


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_toml(path: Path, problems: Problems) -> dict[str, Any] | None:
    """A TOML file's table; None (and a problem) when it cannot be read or parsed."""
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        problems.add_file(path, "no such configuration file")
        return None
    except IsADirectoryError:
        problems.add_file(path, "is a directory, not a configuration file")
        return None
    except OSError as exc:
        problems.add_file(path, f"cannot read: {exc.strerror}")
        return None
    except UnicodeDecodeError as exc:
        line = text_line(exc.object, exc.start)
        problems.add_file(path, f"not valid TOML: not UTF-8 text (at line {line})")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib names line and column, except at the end: say which line that is.
        last = len(text.splitlines()) or 1
        where = f" after line {last}" if "end of document" in str(exc) else ""
        problems.add_file(path, f"not valid TOML: {exc}{where}")
        return None


def text_line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def find_drop_ins(config_root: Path, problems: Problems) -> list[Path]:
    """The *.toml files of the drop-in directories, in the order they apply.

    A name in a later directory masks the same name in an earlier one (an empty file or
    a symlink to /dev/null so masks a file without adding values); the files left
    apply in lexical order of their names, whichever directory they are in.
    """
    return masked_toml_files([config_root / d for d in CONF_DIRS], problems)


def masked_toml_files(
    directories: Sequence[Path], problems: Problems, required: Sequence[Path] = ()
) -> list[Path]:
    """The *.toml files of directories, a name in a later one masking the same name in
    an earlier one, in name order. An absent directory is skipped, unless required."""
    by_name: dict[str, Path] = {}
    for directory in directories:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            if directory in required:
                problems.add_file(directory, "no such directory")
            continue
        except OSError as exc:
            problems.add_file(directory, f"cannot list: {exc.strerror}")
            continue
        for name in names:
            # Hidden names are editors' lock files (.#10-a.toml), never configuration.
            if name.endswith(".toml") and not name.startswith("."):
                if name in by_name:
                    log.debug("%s masks %s", directory / name, by_name[name])
                by_name[name] = directory / name
    return [by_name[name] for name in sorted(by_name)]


# (source, values): one layer of settings, its source as errors and `--origin` name it.
Layer = tuple[str, Mapping[str, Any]]


def read_layers(
    config_root: Path | None,
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    problems: Problems,
    added: Sequence[Layer] = (),
) -> list[Layer]:
    """(source, values) of the drop-ins, the --config file, the command line and the
    layers a command adds of its own (added), in order."""
    files = find_drop_ins(config_root, problems) if config_root is not None else []
    if config_file is not None:
        files.append(config_file)
    layers: list[Layer] = []
    for path in files:
        table = read_toml(path, problems)
        if table is not None:
            layers.append((str(path), table))
    layers.append((COMMAND_LINE, cli_values))
    return [*layers, *added]


def _typed(setting: Setting, value: Any, source: str, problems: Problems) -> Any:
    """Check one raw value against its setting's type; None when it is wrong."""
    if setting.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            got = describe(value) if not isinstance(value, list) else "an item that is not"
            problems.add(source, setting.key, f"expected a list of strings, got {got}")
            return None
        return [v for v in value if _usable_string(setting, v, source, problems)]
    if setting.kind is bool:
        if not isinstance(value, bool):
            problems.add(source, setting.key, f"expected true or false, got {describe(value)}")
            return None
        return value
    if setting.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(source, setting.key, f"expected an integer, got {describe(value)}")
            return None
        return value
    if not isinstance(value, str):
        problems.add(source, setting.key, f"expected a string, got {describe(value)}")
        return None
    if not _usable_string(setting, value, source, problems):
        return None
    if setting.choices and value not in setting.choices:
        problems.add(
            source,
            setting.key,
            f"'{value}' is not one of {', '.join(setting.choices)}"
            + did_you_mean(value, setting.choices),
        )
        return None
    return value


def _usable_string(setting: Setting, value: str, source: str, problems: Problems) -> bool:
    """Not empty, and no NUL: no file name, command or argv can hold one."""
    if not value:
        problems.add(source, setting.key, "expected a non-empty string, got an empty one")
        return False
    if "\0" in value:
        problems.add(source, setting.key, f"{short(value)!r} holds a NUL character")
        return False
    return True


@dataclass
class Merged:
    """Every setting's value after all layers, and where each came from."""

    values: dict[str, Any]
    origins: dict[str, str]
    item_origins: dict[str, list[str]]  # list key -> the source of each item


def merge_layers(layers: Sequence[Layer], problems: Problems) -> Merged:
    """Fold (source, values) layers in order: scalars replace, lists append, [] resets."""
    merged = Merged(
        values={s.key: s.default for s in SETTINGS},
        origins={s.key: "default" for s in SETTINGS},
        item_origins={s.key: [] for s in SETTINGS if s.kind is list},
    )
    for source, layer in layers:
        for key, raw in _flattened(layer).items():
            setting = SETTINGS_BY_KEY.get(key)
            if setting is None:
                _unknown_key(key, raw, source, problems)
                continue
            value = _typed(setting, raw, source, problems)
            if value is None:
                continue
            if setting.kind is not list:
                merged.values[key], merged.origins[key] = value, source
            elif not raw:  # an empty list: forget what the layers before gave
                merged.values[key], merged.item_origins[key] = [], []
                merged.origins[key] = source
            else:
                merged.values[key] = [*merged.values[key], *value]
                merged.item_origins[key] += [source] * len(value)
                merged.origins[key] = ", ".join(dict.fromkeys(merged.item_origins[key]))
    return merged


def _flattened(layer: Mapping[str, Any]) -> dict[str, Any]:
    """A layer with each table of settings sharing a prefix ([ssh] authorized_keys, or
    the dotted key ssh.authorized_keys) as the top-level keys they are (ssh_authorized_keys);
    a misspelt name in it is then reported as an unknown key of that prefix."""
    flat: dict[str, Any] = {}
    for key, raw in layer.items():
        if (
            isinstance(raw, dict)
            and any(s.startswith(f"{key}_") for s in SETTINGS_BY_KEY)
            and not any(name in SETTINGS_BY_KEY for name in raw)  # settings put in a table
        ):
            flat.update({f"{key}_{name}": value for name, value in raw.items()})
        else:
            flat[key] = raw
    return flat


def _unknown_key(key: str, raw: Any, source: str, problems: Problems) -> None:
    """An unknown key; in a table, the settings below it were likely meant for the top."""
    nested = [name for name in raw if name in SETTINGS_BY_KEY] if isinstance(raw, dict) else []
    if nested:
        for name in nested:
            problems.add(
                source,
                f"{key}.{name}",
                f"unknown key: settings are top-level keys, not in a table [{key}] "
                f"(move '{name}' above the first [table] line)",
            )
        return
    problems.add(source, key, "unknown key" + did_you_mean(key, list(SETTINGS_BY_KEY)))
