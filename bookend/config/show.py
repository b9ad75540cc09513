"""`bookend config show`: every effective setting, and with --origin where it came from.

The text form is TOML a --config file could hold (a setting with no value is a
comment), so it can be kept and edited; --origin adds each value's source as a
comment, and for a list one per item.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from bookend.config.table import SETTINGS, Config, Setting


def effective_values(config: Config) -> dict[str, Any]:
    """Every setting's key with the value the build uses, as TOML would spell it."""
    return {setting.key: _plain(_effective(config, setting)) for setting in SETTINGS}


def _effective(config: Config, setting: Setting) -> Any:
    value = setting.show(config) if setting.show else getattr(config, setting.key)
    if setting.show_item is not None:
        return [setting.show_item(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """Enums, paths and tuples as the strings and lists a TOML file holds."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def value_origin(config: Config, key: str) -> str:
    """Where a setting's value came from; a value the build worked out is 'default'."""
    return config.origins.get(key, "default")


def show_json(config: Config, with_origin: bool) -> dict[str, Any]:
    """{key: value}, or with origins {key: {value, origin[, item_origins]}}."""
    values = effective_values(config)
    if not with_origin:
        return values
    shown: dict[str, Any] = {}
    for key, value in values.items():
        shown[key] = {"value": value, "origin": value_origin(config, key)}
        if isinstance(value, list):
            shown[key]["item_origins"] = list(_item_origins(config, key, len(value)))
    return shown


def _item_origins(config: Config, key: str, count: int) -> tuple[str, ...]:
    return tuple(config.origin_of(key, index) for index in range(count))


def show_text(config: Config, with_origin: bool) -> str:
    """The settings as TOML, in the table's order."""
    lines: list[str] = []
    for key, value in effective_values(config).items():
        origin = f"  # {value_origin(config, key)}" if with_origin else ""
        if value is None:  # TOML has no null: only a default leaves a setting unset
            lines.append(f"# {key} is not set")
        elif isinstance(value, list) and with_origin and value:
            lines.append(f"{key} = [")
            for item, source in zip(value, _item_origins(config, key, len(value)), strict=True):
                lines.append(f"    {toml_string(item)},  # {source}")
            lines.append("]")
        else:
            lines.append(f"{key} = {toml_value(value)}{origin}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_string(item) for item in value) + "]"
    return toml_string(str(value))


# TOML's short escapes; every other control character is written \uXXXX.
ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(text: str) -> str:
    """text as a TOML basic string."""
    out = []
    for char in text:
        code = ord(char)
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            # Only a command-line byte that is not UTF-8 gives one (surrogateescape);
            # TOML has no way to say it, so it is shown, not made encodable.
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
