"""Where configuration comes from: the drop-in directories, TOML files, the command line.

Reading collects problems instead of stopping at the first, so the user sees every
broken file at once; what the values mean is bookend.config's business.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.errors import ConfigError

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


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """A ' (did you mean X?)' suffix when a candidate is close, else ''."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
    by_name: dict[str, Path] = {}
    for directory in (config_root / d for d in CONF_DIRS):
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
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


def read_layers(
    config_root: Path | None,
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    problems: Problems,
) -> list[tuple[str, Mapping[str, Any]]]:
    """(source, values) of the drop-ins, the --config file and the command line, in order."""
    files = find_drop_ins(config_root, problems) if config_root is not None else []
    if config_file is not None:
        files.append(config_file)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for path in files:
        table = read_toml(path, problems)
        if table is not None:
            layers.append((str(path), table))
    layers.append((COMMAND_LINE, cli_values))
    return layers
