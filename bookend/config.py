"""Configuration: one table of settings drives the TOML keys, the CLI flags and the help.

Layers are read in order: the drop-in directories (CONF_DIRS, under the config root:
the host's /, never --sysroot), then the --config file, then CLI flags. A scalar takes
the last layer's value; a list appends each layer's items, and an empty list drops
what came before. Everything is checked in one pass that collects every problem, each
as `SOURCE: key: message`, before any build step runs.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.archive.compress import LEVELS, Compression
from bookend.config_sources import COMMAND_LINE, Problems, describe, read_layers, short
from bookend.config_sources import did_you_mean as did_you_mean  # for the stages after
from bookend.errors import BookendError
from bookend.exitrd_load import DIGEST_SUFFIX
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
        "network_files",
        list,
        [],
        "systemd-networkd .network/.netdev/.link files for the initrd (feature network)",
        "--add-network-file",
        metavar="PATH",
    ),
    Setting(
        "iscsi_config",
        str,
        None,
        "iscsid.conf for the initrd, e.g. with CHAP credentials (feature iscsi; "
        "the image is then written mode 0600)",
        "--iscsi-config",
        metavar="PATH",
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
        "uki",
        bool,
        False,
        "write a unified kernel image (kernel, initrd, command line) made by the sysroot's ukify",
        "",
        consts=(("--uki", True, "write a UKI made by the sysroot's ukify instead of an initrd"),),
    ),
    Setting(
        "cmdline",
        str,
        None,
        "kernel command line built into the UKI (--uki)",
        "--cmdline",
        metavar="CMDLINE",
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
    uki: bool = False  # output is a unified kernel image holding the initrd
    cmdline: str | None = None  # the UKI's .cmdline
    network_files: tuple[str, ...] = ()  # networkd files for the initrd's /etc/systemd/network
    iscsi_config: str | None = None  # the initrd's iscsid.conf (secret: CHAP credentials)
    # key -> where its value came from: a file, "default" or "command line"; for a list,
    # every source that gave it items (or the one that emptied it), comma-separated.
    origins: Mapping[str, str] = field(default_factory=dict)
    # list key -> the source of each item, in the order of the list's field above
    item_origins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def origin_of(self, key: str, index: int) -> str:
        """Where item number index of a list setting came from."""
        sources = self.item_origins.get(key, ())
        return sources[index] if index < len(sources) else self.origins.get(key, "config")


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
    return Path(value) if setting.kind is Path else value


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


def merge_layers(layers: Sequence[tuple[str, Mapping[str, Any]]], problems: Problems) -> Merged:
    """Fold (source, values) layers in order: scalars replace, lists append, [] resets."""
    merged = Merged(
        values={s.key: s.default for s in SETTINGS},
        origins={s.key: "default" for s in SETTINGS},
        item_origins={s.key: [] for s in SETTINGS if s.kind is list},
    )
    for source, layer in layers:
        for key, raw in layer.items():
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


def installed_kernels(sysroot: Path) -> list[str]:
    """Kernel versions with a module database under the sysroot's /lib/modules.

    A directory without modules.dep is what a removed kernel leaves behind (DKMS or
    firmware files), not a kernel one can build for.
    """
    root = Sysroot(sysroot)
    return [
        name
        for name in root.listdir("/lib/modules")
        if root.is_dir(f"/lib/modules/{name}") and root.exists(f"/lib/modules/{name}/modules.dep")
    ]


def newest_kernel(sysroot: Path) -> str | None:
    """The newest installed kernel, by version order."""
    versions = installed_kernels(sysroot)
    return max(versions, key=_version_key) if versions else None


def _version_key(version: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def _check_sysroot(sysroot: Path, source: str, problems: Problems) -> bool:
    # os.path.isdir, unlike Path.is_dir on Python 3.11, says False for a path it cannot
    # look at (a name too long, no access, a NUL) instead of raising: used throughout.
    if not os.path.isdir(sysroot):
        what = "does not exist" if not os.path.lexists(sysroot) else "is not a directory"
        problems.add(source, "sysroot", f"{sysroot} {what}; name the root tree to build from")
        return False
    if not os.path.isdir(sysroot / "usr") or not os.path.isdir(sysroot / "etc"):
        problems.add(source, "sysroot", f"{sysroot} is not a root tree (no usr/ and etc/)")
        return False
    return True


def _check_kver(merged: Merged, problems: Problems) -> str:
    sysroot: Path = merged.values["sysroot"]
    kver: str | None = merged.values["kver"]
    source = merged.origins["kver"]
    moddir = sysroot / "lib/modules"
    installed = installed_kernels(sysroot)
    if kver is None:
        if not installed:
            problems.add(source, "kver", f"no kernel with a modules.dep under {moddir}")
            return ""
        return max(installed, key=_version_key)  # the newest
    if "/" in kver or kver in (".", ".."):
        problems.add(source, "kver", f"'{kver}' is not a kernel version")
    elif kver not in installed:
        hint = (
            f" ({moddir / kver} has no modules.dep: run depmod {kver} in the sysroot)"
            if os.path.isdir(moddir / kver)
            else did_you_mean(kver, installed)
            or (f" (installed: {', '.join(sorted(installed))})" if installed else "")
        )
        problems.add(source, "kver", f"no modules for kernel '{kver}' in {moddir}{hint}")
    return kver


# The image is written as ".NAME.bookend-tmp.PID" beside its target first (PID at most
# 4194304, the kernel's limit), and no file name may be longer than 255 bytes.
LONGEST_OUTPUT_NAME = 255 - len("..bookend-tmp.4194304")


def _check_output(
    output: Path, source: str, problems: Problems, key: str = "output", suffix: str = ""
) -> bool:
    """A file name in a directory that exists; suffix: of a file written beside it."""
    longest = LONGEST_OUTPUT_NAME - len(suffix)
    if os.path.isdir(output):
        problems.add(source, key, f"{output} is a directory; name the image file")
    elif not os.path.isdir(output.parent):
        problems.add(source, key, f"directory {output.parent} does not exist")
    elif len(os.fsencode(output.name)) > longest:
        problems.add(source, key, f"file name too long (at most {longest} bytes): {output.name}")
    else:
        return True
    return False


def _check_derived_exitrd(output: Path, kver: str, source: str, problems: Problems) -> None:
    """The exitrd's name beside a good initrd path, with room for its digest's."""
    derived = default_exitrd_path(output, kver)
    longest = LONGEST_OUTPUT_NAME - len(DIGEST_SUFFIX)
    if len(os.fsencode(derived.name)) > longest:
        problems.add(
            source,
            "output",
            f"file name too long for the exitrd beside it, {derived.name} "
            f"(at most {longest} bytes, or give exitrd_output or --no-exitrd)",
        )


def _emergency_access(
    value: str, source: str, problems: Problems
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


def _items(merged: Merged, key: str) -> list[tuple[str, str]]:
    """(item, source) of a list setting, each item once, as the first source gave it."""
    first: dict[str, str] = {}
    for item, source in zip(merged.values[key], merged.item_origins[key], strict=True):
        first.setdefault(item, source)
    return list(first.items())


def _check_files(merged: Merged, key: str, sysroot: Sysroot | None, problems: Problems) -> None:
    """Absolute paths that exist in the sysroot (checked when the sysroot is a root tree)."""
    for name, source in _items(merged, key):
        if not name.startswith("/"):
            problems.add(source, key, f"'{name}' is not an absolute path")
            continue
        if sysroot is None:
            continue
        try:
            found = sysroot.exists(name)
        except BookendError as exc:
            problems.add(source, key, str(exc))
            continue
        if not found:
            problems.add(source, key, f"{sysroot.host_path(name)}: no such file or directory")


def default_exitrd_path(initrd: Path, kver: str) -> Path:
    """Beside the initrd: bookend-initrd-X.img -> bookend-exitrd-X.img."""
    if "initrd" in initrd.name:
        return initrd.with_name(initrd.name.replace("initrd", "exitrd"))
    return initrd.with_name(f"exitrd.img-{kver}")


def _parse_hooks(
    merged: Merged, problems: Problems
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The (point, command) hooks, in the order given, and the source of each."""
    parsed, sources = [], []
    for hook, source in zip(merged.values["hooks"], merged.item_origins["hooks"], strict=True):
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
            sources.append(source)
    return tuple(parsed), tuple(sources)


def _check_known(
    merged: Merged, key: str, known: Sequence[str], what: str, problems: Problems
) -> None:
    """Every item is one of known; a suggestion for the ones that are not."""
    for name, source in _items(merged, key):
        if name not in known:
            problems.add(source, key, f"unknown {what} '{name}'" + did_you_mean(name, known))


# What the image writes into its own files, one per line: a stray space or newline there
# would split a line of /etc/fstab or make a path of a unit name.
NAME_FORMS = {
    "filesystems": (re.compile(r"[A-Za-z0-9_.+-]+"), "a filesystem type such as ext4"),
    "storage_daemons": (
        re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target)"),
        "a unit name such as iscsid.service",
    ),
    "network_files": (
        re.compile(r"/\S*\.(network|netdev|link)"),
        "an absolute path of a .network, .netdev or .link file",
    ),
    "root": (re.compile(r"[^\s#]+"), "a device such as UUID=... or /dev/vda2, without spaces"),
}


def _check_forms(merged: Merged, problems: Problems) -> None:
    for key, (form, example) in NAME_FORMS.items():
        value = merged.values[key]
        pairs = _items(merged, key) if isinstance(value, list) else [(value, merged.origins[key])]
        for name, source in pairs:
            if name is not None and not form.fullmatch(name):
                problems.add(source, key, f"{short(name)!r} is not {example}")


def _check_modules(merged: Merged, sysroot: Sysroot, kver: str, problems: Problems) -> None:
    """Every requested module is a module, an alias or built into this kernel."""
    from bookend import kmodules

    wanted = _items(merged, "modules")
    if not wanted:
        return
    try:
        db = kmodules.load_database(sysroot, kver)
    except BookendError as exc:
        problems.add(merged.origins["kver"], "kver", str(exc))
        return
    for name, source in wanted:
        if not db.is_known(name):
            problems.add(
                source,
                "modules",
                f"no kernel module or alias '{name}' in {db.moddir}"
                + did_you_mean(kmodules.normalize(name), sorted(db.paths)),
            )


def _check_iscsi_config(merged: Merged, sysroot: Sysroot, problems: Problems) -> None:
    """An absolute path of a file in the sysroot, like keyfiles."""
    path, source = merged.values["iscsi_config"], merged.origins["iscsi_config"]
    if path is None:
        return
    if not path.startswith("/"):
        problems.add(source, "iscsi_config", f"'{path}' is not an absolute path")
    elif not sysroot.exists(path):
        problems.add(source, "iscsi_config", f"{sysroot.host_path(path)}: no such file")


def _check_storage_daemons(merged: Merged, sysroot: Sysroot, problems: Problems) -> None:
    from bookend.units import find_unit

    for unit, source in _items(merged, "storage_daemons"):
        if find_unit(sysroot, unit) is None:
            problems.add(source, "storage_daemons", f"unit {unit} not found in the sysroot")


def _check_compress_level(merged: Merged, problems: Problems) -> None:
    level = merged.values["compress_level"]
    low, high = LEVELS[Compression(merged.values["compress"])]
    if level is not None and not low <= level <= high:
        problems.add(
            merged.origins["compress_level"],
            "compress_level",
            f"{level} is not a {merged.values['compress']} level ({low}..{high})",
        )


# What hostonly detection reads from each tree: a tree without it is not one.
DETECTION_TREES = {"sysfs": "dev/block", "procfs": "self/mountinfo"}


def _check_detection_trees(merged: Merged, problems: Problems) -> None:
    """Hostonly detection reads the host's devices and mounts from these."""
    if merged.values["mode"] != ModuleMode.HOSTONLY.value:
        return
    for key, needed in DETECTION_TREES.items():
        tree: Path = merged.values[key]
        if not os.path.isdir(tree):
            problems.add(merged.origins[key], key, f"{tree} is not a directory")
        elif not os.path.exists(tree / needed):
            problems.add(merged.origins[key], key, f"{tree} is not a {key} (no {needed})")


def _check_in_sysroot(merged: Merged, sysroot: Path, problems: Problems) -> str:
    """The checks that look into a sysroot known to be a root tree; the kernel version."""
    kver = _check_kver(merged, problems)
    root = Sysroot(sysroot)
    _check_files(merged, "files", root, problems)
    _check_files(merged, "keyfiles", root, problems)
    _check_files(merged, "network_files", root, problems)
    _check_iscsi_config(merged, root, problems)
    if kver in installed_kernels(sysroot):
        _check_modules(merged, root, kver, problems)
    _check_storage_daemons(merged, root, problems)
    return kver


def load_config(
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    *,
    cwd: Callable[[], Path] = Path.cwd,
    config_root: Path | None = None,
) -> Config:
    """Read the drop-ins, the TOML file (if any) and the CLI values into one checked Config.

    config_root is where the drop-in directories are (the CLI's --config-root, / by
    default); None reads none, as library callers and tests want.
    """
    problems = Problems()
    if config_root is not None and not os.path.isdir(config_root):
        problems.add(COMMAND_LINE, "config_root", f"{config_root} is not a directory")
    merged = merge_layers(read_layers(config_root, config_file, cli_values, problems), problems)
    problems.raise_if_any()  # a mistyped value makes the checks below meaningless

    values, origins = merged.values, merged.origins
    if _check_sysroot(values["sysroot"], origins["sysroot"], problems):
        kver = _check_in_sysroot(merged, values["sysroot"], problems)
    else:
        kver = ""
        _check_files(merged, "files", None, problems)
        _check_files(merged, "keyfiles", None, problems)
    name = kver or "unknown"
    default_name = f"bookend-uki-{name}.efi" if values["uki"] else f"bookend-initrd-{name}.img"
    output = values["output"] or cwd() / default_name
    output_ok = _check_output(output, origins["output"], problems)
    if values["exitrd_output"] is not None:
        exitrd_output, source = values["exitrd_output"], origins["exitrd_output"]
        _check_output(exitrd_output, source, problems, "exitrd_output", DIGEST_SUFFIX)
    elif values["exitrd"] and output_ok and "/" not in kver:  # else no name to derive
        _check_derived_exitrd(output, kver, origins["output"], problems)
    access, password_hash = _emergency_access(
        values["emergency_shell"], origins["emergency_shell"], problems
    )
    _check_known(merged, "driver_classes", _driver_class_names(), "driver class", problems)
    _check_known(merged, "features", _feature_names(), "feature", problems)
    _check_forms(merged, problems)
    _check_compress_level(merged, problems)
    _check_detection_trees(merged, problems)
    if values["cmdline"] is not None and not values["uki"]:
        problems.add(origins["cmdline"], "cmdline", "only a UKI carries a command line (--uki)")
    hooks, hook_sources = _parse_hooks(merged, problems)
    problems.raise_if_any()
    return _config(merged, kver, output, (access, password_hash), (hooks, hook_sources))


def _driver_class_names() -> list[str]:
    from bookend.drivers import DRIVER_CLASSES

    return sorted(DRIVER_CLASSES)


def _feature_names() -> list[str]:
    from bookend.features import ALL

    return sorted(ALL)


def _config(
    merged: Merged,
    kver: str,
    output: Path,
    emergency: tuple[EmergencyAccess, str | None],
    hooks: tuple[tuple[tuple[str, str], ...], tuple[str, ...]],
) -> Config:
    """The checked values as a Config: each list's items once, in the order first given."""
    values = merged.values
    lists = {s.key: _items(merged, s.key) for s in SETTINGS if s.kind is list and s.key != "hooks"}
    item_origins = {key: tuple(source for _, source in pairs) for key, pairs in lists.items()}
    item_origins["hooks"] = hooks[1]
    return Config(
        sysroot=values["sysroot"],
        kver=kver,
        output=output,
        compress=Compression(values["compress"]),
        compress_level=values["compress_level"],
        features=tuple(name for name, _ in lists["features"]),
        modules=tuple(name for name, _ in lists["modules"]),
        filesystems=tuple(name for name, _ in lists["filesystems"]),
        files=tuple(name for name, _ in lists["files"]),
        keyfiles=tuple(name for name, _ in lists["keyfiles"]),
        exitrd=values["exitrd"],
        exitrd_output=values["exitrd_output"] or default_exitrd_path(output, kver),
        storage_daemons=tuple(name for name, _ in lists["storage_daemons"]),
        activation=values["activation"],
        hooks=hooks[0],
        mode=ModuleMode(values["mode"]),
        omit_modules=tuple(name for name, _ in lists["omit_modules"]),
        driver_classes=tuple(name for name, _ in lists["driver_classes"]),
        microcode=values["microcode"],
        sysfs=values["sysfs"],
        procfs=values["procfs"],
        root=values["root"],
        emergency_access=emergency[0],
        root_password_hash=emergency[1],
        force=values["force"],
        rebuild=values["rebuild"],
        uki=values["uki"],
        cmdline=values["cmdline"],
        network_files=tuple(name for name, _ in lists["network_files"]),
        iscsi_config=values["iscsi_config"],
        origins=merged.origins,
        item_origins=item_origins,
    )
