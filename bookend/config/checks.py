"""The checks of form: what each value must look like, without looking at any tree.

The merged layers become Settings: every value of its field's type, each list's items
once (as the first source gave them). What needs the sysroot (kernels, modules, units,
files, the output directory) is bookend.resolve's; the names of the features and
driver classes are passed in by the caller, so configuration imports no feature.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookend.archive.compress import LEVELS, Compression
from bookend.config.sources import (
    COMMAND_LINE,
    Layer,
    Merged,
    Problems,
    merge_layers,
    read_layers,
)
from bookend.config.table import SETTINGS, Setting
from bookend.suggest import did_you_mean

# Names the checks must know but configuration does not own: setting key -> names.
Vocabularies = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Settings:
    """Every setting's value after the layers and the checks of form.

    None where the sysroot decides (kver, output, exitrd_output unset). The problems
    found are not raised here: bookend.resolve reports them with its own, so that
    every problem is seen at once.
    """

    values: Mapping[str, Any]
    origins: Mapping[str, str]
    item_origins: Mapping[str, tuple[str, ...]]
    problems: tuple[str, ...] = ()


def load_settings(
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    vocabularies: Vocabularies,
    *,
    config_root: Path | None = None,
    added: Sequence[Layer] = (),
) -> Settings:
    """Read the drop-ins, the TOML file (if any) and the CLI values, and check their form.

    config_root is where the drop-in directories are (the CLI's --config-root, / by
    default); None reads none, as library callers and tests want. added: layers after
    the command line, a command's own (boot-test's image). A value of the wrong type is
    raised at once (ConfigError): the checks after it would mean nothing.
    """
    problems = Problems()
    if config_root is not None and not os.path.isdir(config_root):
        problems.add(COMMAND_LINE, "config_root", f"{config_root} is not a directory")
    layers = read_layers(config_root, config_file, cli_values, problems, added)
    merged = merge_layers(layers, problems)
    problems.raise_if_any()
    values: dict[str, Any] = {}
    item_origins: dict[str, tuple[str, ...]] = {}
    for setting in SETTINGS:
        if setting.kind is list:
            names = vocabularies[setting.key] if setting.vocabulary else None
            values[setting.key], item_origins[setting.key] = _checked_items(
                setting, merged, names, problems
            )
        else:
            values[setting.key] = _checked_value(setting, merged, problems)
    _check_compress_level(values, merged.origins, problems)
    if values["cmdline"] is not None and not values["uki"]:
        problems.add(
            merged.origins["cmdline"], "cmdline", "only a UKI carries a command line (--uki)"
        )
    _check_signing(values, merged.origins, problems)
    return Settings(values, dict(merged.origins), item_origins, tuple(problems.messages))


def _check_signing(
    values: Mapping[str, Any], origins: Mapping[str, str], problems: Problems
) -> None:
    """Keys only for a UKI; a Secure Boot key with its certificate; a PCR public key with
    the private key that signs."""
    for key in ("secureboot_key", "secureboot_cert", "pcr_private_key", "pcr_public_key"):
        if values[key] is not None and not values["uki"]:
            problems.add(origins[key], key, "only a UKI is signed (--uki)")
    for key, other in (
        ("secureboot_key", "secureboot_cert"),
        ("secureboot_cert", "secureboot_key"),
    ):
        if values[key] is not None and values[other] is None:
            problems.add(origins[key], key, f"needs {other} too (--{other.replace('_', '-')})")
    if values["pcr_public_key"] is not None and values["pcr_private_key"] is None:
        problems.add(origins["pcr_public_key"], "pcr_public_key", "needs pcr_private_key too")


def _checked_value(setting: Setting, merged: Merged, problems: Problems) -> Any:
    value = merged.values[setting.key]
    if value is None:
        return None
    problem = setting.check(value) if setting.check else None
    if problem:
        problems.add(merged.origins[setting.key], setting.key, problem)
    return setting.convert(value) if setting.kind is str else value


def _checked_items(
    setting: Setting, merged: Merged, known: Sequence[str] | None, problems: Problems
) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """The items whose form is good, and the source of each."""
    items, sources = [], []
    for item, source in _each(setting, merged):
        problem = setting.check(item) if setting.check else None
        if problem is None and known is not None and item not in known:
            problem = f"unknown {setting.vocabulary} '{item}'" + did_you_mean(item, known)
        if problem:
            problems.add(source, setting.key, problem)
            continue
        items.append(setting.parse_item(item) if setting.parse_item else item)
        sources.append(source)
    return tuple(items), tuple(sources)


def _each(setting: Setting, merged: Merged) -> list[tuple[str, str]]:
    """(item, source) of a list setting; each item once, as the first source gave it."""
    pairs = zip(merged.values[setting.key], merged.item_origins[setting.key], strict=True)
    if not setting.unique:
        return list(pairs)
    first: dict[str, str] = {}
    for item, source in pairs:
        first.setdefault(item, source)
    return list(first.items())


def _check_compress_level(
    values: Mapping[str, Any], origins: Mapping[str, str], problems: Problems
) -> None:
    for key, compression_key in (("compress_level", "compress"),
                                 ("exitrd_compress_level", "exitrd_compress")):  # fmt: skip
        level, compression = values[key], values[compression_key]
        assert isinstance(compression, Compression)
        low, high = LEVELS[compression]
        if level is not None and not low <= level <= high:
            problems.add(
                origins[key], key, f"{level} is not a {compression.value} level ({low}..{high})"
            )
