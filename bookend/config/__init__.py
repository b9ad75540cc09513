"""Configuration: one table of settings drives the TOML keys, the CLI flags and the help.

Layers are read in order: the drop-in directories (CONF_DIRS, under the config root:
the host's /, never --sysroot), then the --config file, then CLI flags, then what a
command adds of its own (boot-test's image: a Layer named by its source). Their values
are checked for type and form here (bookend.config.checks), each problem as `SOURCE:
key: message`; bookend.resolve then checks them against the sysroot and makes the
Config every later stage reads. Nothing here imports a feature: the features import
this.
"""

from bookend.archive.compress import Compression
from bookend.config.checks import Settings, Vocabularies, load_settings
from bookend.config.sources import COMMAND_LINE, CONF_DIRS, Layer, Problems
from bookend.config.table import (
    HOOK_POINTS,
    SETTINGS,
    SETTINGS_BY_KEY,
    Config,
    EmergencyAccess,
    ModuleMode,
    Setting,
    SshHostKeys,
    SshServer,
    make_config,
)

__all__ = [
    "COMMAND_LINE",
    "CONF_DIRS",
    "HOOK_POINTS",
    "SETTINGS",
    "SETTINGS_BY_KEY",
    "Compression",
    "Config",
    "EmergencyAccess",
    "Layer",
    "ModuleMode",
    "Problems",
    "Setting",
    "Settings",
    "SshHostKeys",
    "SshServer",
    "Vocabularies",
    "load_settings",
    "make_config",
]
