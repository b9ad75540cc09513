"""Configuration: one table of settings drives the TOML keys, the CLI flags and the help.

A TOML file (--config) is read first, then CLI flags: a flag replaces a scalar and
extends a list. Everything is checked in one pass that collects every problem, each
as `SOURCE: key: message`, before any build step runs.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.archive.compress import LEVELS, Compression
from bookend.errors import ConfigError
from bookend.sysroot import Sysroot


class ModuleMode(enum.Enum):
    """Which kernel modules an image carries, as dracut's --hostonly and --no-hostonly."""

    HOSTONLY = "hostonly"  # what this machine needs for its root and /usr
    GENERIC = "generic"  # every storage, filesystem and keyboard driver: boots anywhere


class EmergencyAccess(enum.Enum):
    """Who may use the emergency shell when the boot fails."""

    LOCKED = "locked"  # root has no usable password: sulogin refuses
    UNLOCKED = "unlocked"  # anyone at the console gets a root shell
    PASSWORD = "password"  # root's password is the configured crypt(3) hash


@dataclass(frozen=True)
class Setting:
    """One configuration key: its TOML name, CLI flag, type and help."""

    key: str
    kind: type  # str, Path, int, bool or list
    default: Any
    help: str
    flag: str
    short: str | None = None
    metavar: str = "VALUE"
    choices: tuple[str, ...] = ()
    # Flags that each set a constant instead of taking a value, e.g. --generic.
    consts: tuple[tuple[str, Any, str], ...] = ()  # (flag, value, help)


# The points dracut users know hooks by, in boot order.
HOOK_POINTS = ("cmdline", "pre-udev", "pre-trigger", "pre-mount", "mount", "pre-pivot")

SETTINGS: tuple[Setting, ...] = (
    Setting("sysroot", Path, Path("/"), "root tree to build from", "--sysroot", metavar="DIR"),
    Setting(
        "kver",
        str,
        None,
        "kernel version (default: newest under the sysroot's /lib/modules)",
        "--kver",
        metavar="VERSION",
    ),
    Setting(
        "output",
        Path,
        None,
        "where to write the initrd (default: ./bookend-initrd-KVER.img)",
        "--output",
        short="-o",
        metavar="FILE",
    ),
    Setting(
        "compress",
        str,
        Compression.ZSTD.value,
        "compression of the image",
        "--compress",
        metavar="NAME",
        choices=tuple(c.value for c in Compression),
    ),
    Setting("compress_level", int, None, "compression level", "--compress-level", metavar="N"),
    Setting(
        "features",
        list,
        [],
        "extra features to enable (see `bookend features`)",
        "--add-feature",
        metavar="NAME",
    ),
    Setting(
        "modules",
        list,
        [],
        "kernel modules to include and load at boot, by name or alias",
        "--add-module",
        metavar="NAME",
    ),
    Setting(
        "filesystems",
        list,
        [],
        "filesystem types the initrd must mount (module, fsck and mount helper)",
        "--filesystem",
        metavar="TYPE",
    ),
    Setting(
        "omit_modules",
        list,
        [],
        "kernel modules never to include, by name or glob (even as a dependency)",
        "--omit-module",
        metavar="GLOB",
    ),
    Setting(
        "driver_classes",
        list,
        [],
        "whole classes of drivers to include, e.g. nvme, usb-storage (see README)",
        "--add-driver-class",
        metavar="CLASS",
    ),
    Setting(
        "mode",
        str,
        ModuleMode.HOSTONLY.value,
        "which modules to include",
        "",
        choices=tuple(m.value for m in ModuleMode),
        consts=(
            ("--hostonly", "hostonly", "modules this machine needs for its root (default)"),
            ("--generic", "generic", "every storage, filesystem and keyboard driver"),
        ),
    ),
    Setting(
        "microcode",
        bool,
        True,
        "prepend early CPU microcode",
        "",
        consts=(
            ("--microcode", True, "prepend early CPU microcode (default)"),
            ("--no-microcode", False, "no early microcode segment"),
        ),
    ),
    Setting(
        "sysfs",
        Path,
        Path("/sys"),
        "sysfs to detect the host's devices from (hostonly)",
        "--sysfs",
        metavar="DIR",
    ),
    Setting(
        "procfs",
        Path,
        Path("/proc"),
        "procfs to detect the host's mounts and CPU from (hostonly)",
        "--procfs",
        metavar="DIR",
    ),
    Setting(
        "files", list, [], "extra files or directories to include", "--add-file", metavar="PATH"
    ),
    Setting(
        "keyfiles",
        list,
        [],
        "LUKS key files to embed at their paths (the image is then written mode 0600)",
        "--add-keyfile",
        metavar="PATH",
    ),
    Setting(
        "exitrd",
        bool,
        True,
        "also write the exitrd, the image shutdown pivots into",
        "",
        consts=(
            ("--exitrd", True, "also write the exitrd (default)"),
            ("--no-exitrd", False, "write the initrd only"),
        ),
    ),
    Setting(
        "force",
        bool,
        False,
        "replace an existing initrd even with a new one that fails `bookend check`",
        "",
        consts=(("--force", True, "replace the initrd even if the new one fails its check"),),
    ),
    Setting(
        "rebuild",
        bool,
        False,
        "build even when the images beside the output were made from the same inputs",
        "",
        consts=(("--rebuild", True, "build even when the images are up to date"),),
    ),
    Setting(
        "exitrd_output",
        Path,
        None,
        "where to write the exitrd (default: beside the initrd, 'initrd' in its name "
        "replaced by 'exitrd')",
        "--exitrd-output",
        metavar="FILE",
    ),
    Setting(
        "storage_daemons",
        list,
        [],
        "units started in the initrd that serve the root until the exitrd stops them",
        "--add-storage-daemon",
        metavar="UNIT",
    ),
    Setting(
        "activation",
        str,
        None,
        "command in the real root run under /sysroot before switch-root (e.g. NixOS' activate)",
        "--activation",
        metavar="COMMAND",
    ),
    Setting(
        "hooks",
        list,
        [],
        f"shell command run at a boot point, as POINT=COMMAND ({', '.join(HOOK_POINTS)})",
        "--hook",
        metavar="POINT=COMMAND",
    ),
    Setting(
        "root",
        str,
        None,
        "root device to mount at /sysroot when the kernel command line names none",
        "--root",
        metavar="DEVICE",
    ),
    Setting(
        "emergency_shell",
        str,
        EmergencyAccess.LOCKED.value,
        "emergency shell access: 'locked', 'unlocked' or a crypt(3) hash of root's password",
        "--emergency-shell",
        metavar="ACCESS",
    ),
)

SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The validated configuration every later stage reads."""

    sysroot: Path
    kver: str
    output: Path
    compress: Compression
    compress_level: int | None
    features: tuple[str, ...]
    modules: tuple[str, ...]
    filesystems: tuple[str, ...]
    files: tuple[str, ...]
    keyfiles: tuple[str, ...]
    exitrd: bool
    exitrd_output: Path
    storage_daemons: tuple[str, ...]
    activation: str | None
    hooks: tuple[tuple[str, str], ...]  # (point, shell command), in the order given
    mode: ModuleMode
    omit_modules: tuple[str, ...]
    driver_classes: tuple[str, ...]
    microcode: bool
    sysfs: Path
    procfs: Path
    root: str | None
    emergency_access: EmergencyAccess
    root_password_hash: str | None
    force: bool = False  # replace the initrd even if the new one fails its check
    rebuild: bool = False  # build even when the images are up to date
    origins: Mapping[str, str] = field(default_factory=dict)  # key -> where its value came from


@dataclass
class _Problems:
    """Every problem found, so the user sees them all at once."""

    messages: list[str] = field(default_factory=list)

    def add(self, source: str, key: str, message: str) -> None:
        self.messages.append(f"{source}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("; ".join(self.messages))


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """A ' (did you mean X?)' suffix when a candidate is close, else ''."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _typed(setting: Setting, value: Any, source: str, problems: _Problems) -> Any:
    """Check one raw value against its setting's type; None when it is wrong."""
    if setting.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.add(source, setting.key, "expected a list of strings")
            return None
        return list(value)
    if setting.kind is bool:
        if not isinstance(value, bool):
            problems.add(source, setting.key, f"expected true or false, got {value!r}")
            return None
        return value
    if setting.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(source, setting.key, f"expected an integer, got {value!r}")
            return None
        return value
    if not isinstance(value, str) or not value:
        problems.add(source, setting.key, f"expected a non-empty string, got {value!r}")
        return None
    if setting.choices and value not in setting.choices:
        problems.add(
            source,
            setting.key,
            f"'{value}' is not one of {', '.join(setting.choices)}"
            + did_you_mean(value, setting.choices),
        )
        return None
    return Path(value) if setting.kind is Path else value


def merge_layers(
    layers: Sequence[tuple[str, Mapping[str, Any]]], problems: _Problems
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fold (source, values) layers in order: scalars replace, lists extend."""
    values: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    origins: dict[str, str] = {s.key: "default" for s in SETTINGS}
    for source, layer in layers:
        for key, raw in layer.items():
            setting = SETTINGS_BY_KEY.get(key)
            if setting is None:
                problems.add(source, key, "unknown key" + did_you_mean(key, list(SETTINGS_BY_KEY)))
                continue
            value = _typed(setting, raw, source, problems)
            if value is None:
                continue
            values[key] = [*values[key], *value] if setting.kind is list else value
            origins[key] = source
    return values, origins


def installed_kernels(sysroot: Path) -> list[str]:
    """Kernel versions with a module directory under the sysroot's /lib/modules."""
    root = Sysroot(sysroot)
    return [name for name in root.listdir("/lib/modules") if root.is_dir(f"/lib/modules/{name}")]


def newest_kernel(sysroot: Path) -> str | None:
    """The newest installed kernel, by version order."""
    versions = installed_kernels(sysroot)
    return max(versions, key=_version_key) if versions else None


def _version_key(version: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def _check_sysroot(sysroot: Path, source: str, problems: _Problems) -> bool:
    if not sysroot.is_dir():
        problems.add(source, "sysroot", f"{sysroot} is not a directory")
        return False
    if not (sysroot / "usr").is_dir() or not (sysroot / "etc").is_dir():
        problems.add(source, "sysroot", f"{sysroot} is not a root tree (no usr/ and etc/)")
        return False
    return True


def _check_kver(values: dict[str, Any], origins: dict[str, str], problems: _Problems) -> str:
    sysroot: Path = values["sysroot"]
    kver: str | None = values["kver"]
    if kver is None:
        kver = newest_kernel(sysroot)
        if kver is None:
            problems.add(origins["kver"], "kver", f"no kernel under {sysroot / 'lib/modules'}")
            return ""
        return kver
    if "/" in kver or kver in (".", ".."):
        problems.add(origins["kver"], "kver", f"'{kver}' is not a kernel version")
        return kver
    installed = installed_kernels(sysroot)
    if kver not in installed:
        problems.add(
            origins["kver"],
            "kver",
            f"no modules for kernel '{kver}' in {sysroot / 'lib/modules'}"
            + did_you_mean(kver, installed),
        )
    return kver


def _check_output(output: Path, source: str, problems: _Problems, key: str = "output") -> None:
    if output.is_dir():
        problems.add(source, key, f"{output} is a directory; name the image file")
    elif not output.parent.is_dir():
        problems.add(source, key, f"directory {output.parent} does not exist")


def _emergency_access(
    value: str, source: str, problems: _Problems
) -> tuple[EmergencyAccess, str | None]:
    if value in (EmergencyAccess.LOCKED.value, EmergencyAccess.UNLOCKED.value):
        return EmergencyAccess(value), None
    # A crypt(3) hash: $id$...; anything else is almost certainly a typo or a plain password.
    if re.fullmatch(r"\$[0-9a-z]+\$[^\s:]+", value):
        return EmergencyAccess.PASSWORD, value
    problems.add(
        source,
        "emergency_shell",
        "expected 'locked', 'unlocked' or a crypt(3) password hash such as one from "
        "`openssl passwd -6`" + did_you_mean(value, ["locked", "unlocked"]),
    )
    return EmergencyAccess.LOCKED, None


def _check_files(files: list[str], source: str, problems: _Problems, key: str = "files") -> None:
    for name in files:
        if not name.startswith("/"):
            problems.add(source, key, f"'{name}' is not an absolute path")


def default_exitrd_path(initrd: Path, kver: str) -> Path:
    """Beside the initrd: bookend-initrd-X.img -> bookend-exitrd-X.img."""
    if "initrd" in initrd.name:
        return initrd.with_name(initrd.name.replace("initrd", "exitrd"))
    return initrd.with_name(f"exitrd.img-{kver}")


def _parse_hooks(hooks: list[str], source: str, problems: _Problems) -> tuple[tuple[str, str], ...]:
    parsed = []
    for hook in hooks:
        point, sep, command = hook.partition("=")
        point = point.strip()
        if not sep or not command.strip():
            problems.add(source, "hooks", f"'{hook}' is not POINT=COMMAND")
        elif point not in HOOK_POINTS:
            problems.add(
                source, "hooks", f"unknown hook point '{point}'" + did_you_mean(point, HOOK_POINTS)
            )
        else:
            parsed.append((point, command.strip()))
    return tuple(parsed)


def _check_driver_classes(classes: list[str], source: str, problems: _Problems) -> None:
    from bookend.drivers import DRIVER_CLASSES

    for name in classes:
        if name not in DRIVER_CLASSES:
            problems.add(
                source,
                "driver_classes",
                f"unknown driver class '{name}'" + did_you_mean(name, sorted(DRIVER_CLASSES)),
            )


def load_config(
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    *,
    cwd: Callable[[], Path] = Path.cwd,
) -> Config:
    """Read the TOML file (if any) and the CLI values into one checked Config."""
    problems = _Problems()
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), read_toml(config_file)))
    layers.append(("command line", cli_values))
    values, origins = merge_layers(layers, problems)
    problems.raise_if_any()  # a mistyped value makes the checks below meaningless

    sysroot_ok = _check_sysroot(values["sysroot"], origins["sysroot"], problems)
    kver = _check_kver(values, origins, problems) if sysroot_ok else ""
    output = values["output"] or cwd() / f"bookend-initrd-{kver or 'unknown'}.img"
    _check_output(output, origins["output"], problems)
    access, password_hash = _emergency_access(
        values["emergency_shell"], origins["emergency_shell"], problems
    )
    _check_files(values["files"], origins["files"], problems)
    _check_files(values["keyfiles"], origins["keyfiles"], problems, "keyfiles")
    _check_driver_classes(values["driver_classes"], origins["driver_classes"], problems)
    hooks = _parse_hooks(values["hooks"], origins["hooks"], problems)
    if values["exitrd_output"] is not None:
        _check_output(values["exitrd_output"], origins["exitrd_output"], problems, "exitrd_output")
    level = values["compress_level"]
    low, high = LEVELS[Compression(values["compress"])]
    if level is not None and not low <= level <= high:
        problems.add(
            origins["compress_level"],
            "compress_level",
            f"{level} is not a {values['compress']} level ({low}..{high})",
        )
    problems.raise_if_any()

    return Config(
        sysroot=values["sysroot"],
        kver=kver,
        output=output,
        compress=Compression(values["compress"]),
        compress_level=level,
        features=tuple(dict.fromkeys(values["features"])),
        modules=tuple(dict.fromkeys(values["modules"])),
        filesystems=tuple(dict.fromkeys(values["filesystems"])),
        files=tuple(dict.fromkeys(values["files"])),
        keyfiles=tuple(dict.fromkeys(values["keyfiles"])),
        exitrd=values["exitrd"],
        exitrd_output=values["exitrd_output"] or default_exitrd_path(output, kver),
        storage_daemons=tuple(dict.fromkeys(values["storage_daemons"])),
        activation=values["activation"],
        hooks=hooks,
        mode=ModuleMode(values["mode"]),
        omit_modules=tuple(dict.fromkeys(values["omit_modules"])),
        driver_classes=tuple(dict.fromkeys(values["driver_classes"])),
        microcode=values["microcode"],
        sysfs=values["sysfs"],
        procfs=values["procfs"],
        root=values["root"],
        emergency_access=access,
        root_password_hash=password_hash,
        force=values["force"],
        rebuild=values["rebuild"],
        origins=origins,
    )
