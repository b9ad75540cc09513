"""Resolve: the checked settings against the sysroot, into the Config the build reads.

Between configuration (types and forms) and the plan. It looks into the trees the
settings name: the sysroot is a root tree, the kernel version is installed (or the
newest is chosen), the kernel modules are in its modules.dep, the files (files,
keyfiles, network_files, iscsi_config, exitrd_files) and storage daemon units exist,
the exitrd's system extensions are there, the SSH keys to authorize are keys,
hostonly detection's sysfs and procfs are there, and the outputs can be written
where they are named. Every problem, with the configuration's own, is reported at
once as `SOURCE: key: message` before anything is built.

The module database it reads to check module names is parsed through the shared
ScanCache (kmodules.shared_database): pass the build's cache and the plan and closure
find it there instead of parsing it again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bookend import kmodules
from bookend.config import (
    Config,
    Layer,
    ModuleMode,
    Problems,
    Settings,
    Vocabularies,
    load_settings,
    make_config,
)
from bookend.errors import BookendError
from bookend.exitrd_store import DIGEST_SUFFIX
from bookend.kmodules import MODULE_ROOTS
from bookend.scancache import ScanCache
from bookend.signing import absolute_keys, check_keys, public_key_of, verity_certificate_path
from bookend.sshkeys import read_authorized_keys
from bookend.suggest import did_you_mean
from bookend.sysroot import Sysroot
from bookend.units import UNIT_DIRS, find_unit

# The image is written as ".NAME.bookend-tmp.PID" beside its target first (PID at most
# 4194304, the kernel's limit), and no file name may be longer than 255 bytes.
LONGEST_OUTPUT_NAME = 255 - len("..bookend-tmp.4194304")
# What hostonly detection reads from each tree: a tree without it is not one.
DETECTION_TREES = {"sysfs": "dev/block", "procfs": "self/mountinfo"}


def configure(
    config_file: Path | None,
    cli_values: Mapping[str, Any],
    vocabularies: Vocabularies,
    *,
    cwd: Callable[[], Path] = Path.cwd,
    config_root: Path | None = None,
    cache: ScanCache | None = None,
    added: Sequence[Layer] = (),
) -> Config:
    """The configuration (bookend.config.load_settings) resolved against its sysroot."""
    settings = load_settings(
        config_file, cli_values, vocabularies, config_root=config_root, added=added
    )
    return resolve(settings, cwd=cwd, cache=cache)


def resolve(
    settings: Settings, *, cwd: Callable[[], Path] = Path.cwd, cache: ScanCache | None = None
) -> Config:
    """The Config of settings: kernel version and outputs worked out, the sysroot checked."""
    problems = Problems(list(settings.problems))
    values, origins = settings.values, settings.origins
    kver = ""
    if _check_sysroot(values["sysroot"], origins["sysroot"], problems):
        kver = _check_in_sysroot(settings, cache or ScanCache(None), problems)
    name = kver or "unknown"
    default_name = f"bookend-uki-{name}.efi" if values["uki"] else f"bookend-initrd-{name}.img"
    output = values["output"] or cwd() / default_name
    output_ok = _check_output(output, origins["output"], problems)
    if values["exitrd_output"] is not None:
        exitrd_output, source = values["exitrd_output"], origins["exitrd_output"]
        _check_output(exitrd_output, source, problems, "exitrd_output", DIGEST_SUFFIX)
    elif values["exitrd"] and output_ok and "/" not in kver:  # else no name to derive
        _check_derived_exitrd(output, kver, origins["output"], problems)
    _check_detection_trees(settings, problems)
    _check_sysexts(settings, problems)
    _check_shutdown(settings, problems)
    _check_initrd_extensions(settings, problems)
    _check_credentials(settings, problems)
    _check_verity_certificates(settings, problems)
    _check_authorized_keys(settings, problems)
    check_keys(values, origins, problems)
    problems.raise_if_any()
    shutdown = values["exitrd_shutdown"]
    resolved = {
        **values,
        "kver": kver,
        "output": output,
        "exitrd_output": values["exitrd_output"] or default_exitrd_path(output, kver),
        # A file on this machine: named whole in the manifest and the up-to-date record.
        "exitrd_shutdown": shutdown and Path(os.path.abspath(shutdown)),
        **absolute_keys(values),
    }
    return make_config(resolved, origins, settings.item_origins)


def installed_kernels(sysroot: Path) -> list[str]:
    """Kernel versions with a module database under the sysroot's /lib/modules or
    /usr/lib/modules, or the modules.order its package ships (unpacked, never
    configured: kmodules indexes it).

    A directory with neither is what a removed kernel leaves behind (DKMS or
    firmware files), not a kernel one can build for.
    """
    root = Sysroot(sysroot)
    found = {
        name
        for top in MODULE_ROOTS
        for name in root.listdir(top)
        if root.is_dir(f"{top}/{name}")
        and any(root.exists(f"{top}/{name}/{f}") for f in ("modules.dep", "modules.order"))
    }
    return sorted(found)


def newest_kernel(sysroot: Path) -> str | None:
    """The newest installed kernel, by version order."""
    versions = installed_kernels(sysroot)
    return max(versions, key=_version_key) if versions else None


def _version_key(version: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def default_exitrd_path(initrd: Path, kver: str) -> Path:
    """Beside the initrd: bookend-initrd-X.img -> bookend-exitrd-X.img."""
    if "initrd" in initrd.name:
        return initrd.with_name(initrd.name.replace("initrd", "exitrd"))
    return initrd.with_name(f"exitrd.img-{kver}")


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


def _check_in_sysroot(settings: Settings, cache: ScanCache, problems: Problems) -> str:
    """The checks that look into a sysroot known to be a root tree; the kernel version."""
    sysroot: Path = settings.values["sysroot"]
    kver = _check_kver(sysroot, settings.values["kver"], settings.origins["kver"], problems)
    root = Sysroot(sysroot)
    _check_files(settings, "files", root, problems)
    _check_files(settings, "keyfiles", root, problems)
    _check_files(settings, "network_files", root, problems)
    _check_file(settings, "iscsi_config", root, problems)
    _check_files(settings, "exitrd_files", root, problems)
    if kver in installed_kernels(sysroot):
        _check_modules(settings, root, kver, cache, problems)
    for unit, source in _items(settings, "storage_daemons"):
        if find_unit(root, unit) is None:
            problems.add(source, "storage_daemons", f"unit {unit} not found in the sysroot")
    _check_units(settings, root, problems)
    _check_confext_support(settings, root, problems)
    return kver


def _check_units(settings: Settings, sysroot: Sysroot, problems: Problems) -> None:
    """Each added unit, and the target it is to be enabled for, is the sysroot's."""
    items = _items(settings, "units")
    if not items:
        return
    known = sorted({name for d in UNIT_DIRS for name in sysroot.listdir(d)})
    for (unit, target), source in items:
        for what, name in (("unit", unit), ("target", target)):
            if name is not None and find_unit(sysroot, name) is None:
                message = f"{what} {name} not found in the sysroot"
                problems.add(source, "units", message + did_you_mean(name, known))


def _check_kver(sysroot: Path, kver: str | None, source: str, problems: Problems) -> str:
    # Each distinct directory once: on a merged-/usr tree /lib/modules is /usr/lib/modules.
    root = Sysroot(sysroot)
    canonical = {root.resolve(top).path: top for top in reversed(MODULE_ROOTS)}
    tops = [sysroot / top.lstrip("/") for top in reversed(canonical.values())]
    moddir = " or ".join(str(top) for top in tops)
    installed = installed_kernels(sysroot)
    if kver is None:
        if not installed:
            problems.add(source, "kver", f"no kernel with a modules.dep under {moddir}")
            return ""
        return max(installed, key=_version_key)  # the newest
    if "/" in kver or kver in (".", ".."):
        problems.add(source, "kver", f"'{kver}' is not a kernel version")
    elif kver not in installed:
        bare = next((top / kver for top in tops if os.path.isdir(top / kver)), None)
        hint = (
            f" ({bare} has no modules.dep: run depmod {kver} in the sysroot)"
            if bare is not None
            else did_you_mean(kver, installed)
            or (f" (installed: {', '.join(sorted(installed))})" if installed else "")
        )
        problems.add(source, "kver", f"no modules for kernel '{kver}' in {moddir}{hint}")
    return kver


def _items(settings: Settings, key: str) -> Sequence[tuple[Any, str]]:
    return list(zip(settings.values[key], settings.item_origins[key], strict=True))


def _check_files(settings: Settings, key: str, sysroot: Sysroot, problems: Problems) -> None:
    """The paths (absolute: their form is checked) exist in the sysroot."""
    for name, source in _items(settings, key):
        _check_path(name, source, key, sysroot, problems)


def _check_file(settings: Settings, key: str, sysroot: Sysroot, problems: Problems) -> None:
    """A setting's one path, if set, exists in the sysroot."""
    if settings.values[key] is not None:
        _check_path(settings.values[key], settings.origins[key], key, sysroot, problems)


def _check_path(name: str, source: str, key: str, sysroot: Sysroot, problems: Problems) -> None:
    try:
        found = sysroot.exists(name)
    except BookendError as exc:
        problems.add(source, key, str(exc))
        return
    if not found:
        problems.add(source, key, f"{sysroot.host_path(name)}: no such file or directory")


def _check_modules(
    settings: Settings, sysroot: Sysroot, kver: str, cache: ScanCache, problems: Problems
) -> None:
    """Every requested module is a module, an alias or built into this kernel."""
    wanted = _items(settings, "modules")
    if not wanted:
        return
    try:
        db = kmodules.shared_database(sysroot, kver, cache)
    except BookendError as exc:
        problems.add(settings.origins["kver"], "kver", str(exc))
        return
    for name, source in wanted:
        if not db.is_known(name):
            problems.add(
                source,
                "modules",
                f"no kernel module or alias '{name}' in {db.moddir}"
                + did_you_mean(kmodules.normalize(name), sorted(db.paths)),
            )


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


def _check_sysexts(settings: Settings, problems: Problems) -> None:
    """Each system extension is a directory or a file on this machine (what it holds is
    bookend.sysext's to check, when the exitrd is planned)."""
    for name, source in _items(settings, "exitrd_sysexts"):
        if not os.path.isdir(name) and not os.path.isfile(name):
            what = "no such file or directory" if not os.path.lexists(name) else "not a file"
            problems.add(source, "exitrd_sysexts", f"{name}: {what}")


def _check_shutdown(settings: Settings, problems: Problems) -> None:
    """exitrd_shutdown is a file on this machine (what it is, bookend.exitrd checks)."""
    path = settings.values["exitrd_shutdown"]
    if path is not None and not os.path.isfile(path):
        what = "no such file" if not os.path.lexists(path) else "not a file"
        problems.add(settings.origins["exitrd_shutdown"], "exitrd_shutdown", f"{path}: {what}")


def _check_credentials(settings: Settings, problems: Problems) -> None:
    """Each credential's file is a readable file on this machine."""
    for (name, path), source in _items(settings, "credentials"):
        if not os.path.isfile(path):
            what = "no such file" if not os.path.lexists(path) else "not a file"
            problems.add(source, "credentials", f"{name}: {path}: {what}")
        elif not os.access(path, os.R_OK):
            problems.add(source, "credentials", f"{name}: {path}: not readable")


def _check_verity_certificates(settings: Settings, problems: Problems) -> None:
    """Each is a PEM certificate here, and no two go to the same name in /etc/verity.d
    (nor to a hidden one, which systemd skips)."""
    key = "verity_certificates"
    seen: dict[str, str] = {}
    for name, source in _items(settings, key):
        target = verity_certificate_path(name)
        if target.rpartition("/")[2].startswith("."):
            problems.add(source, key, f"{name}: a hidden name, which systemd skips in verity.d")
        elif target in seen:
            problems.add(source, key, f"{name}: {target}, as is {seen[target]}: rename one")
            continue
        seen[target] = name
        try:
            public_key_of(Path(name), "cert")
        except BookendError as exc:
            problems.add(source, key, str(exc))


def _check_initrd_extensions(settings: Settings, problems: Problems) -> None:
    """Each extension is a file here (what it holds is checked when the initrd is
    planned, bookend.features.extensions)."""
    for key in ("sysexts", "confexts"):
        for name, source in _items(settings, key):
            if not os.path.isfile(name):
                what = "no such file" if not os.path.lexists(name) else "not an image file"
                problems.add(source, key, f"{name}: {what}")


def _check_confext_support(settings: Settings, sysroot: Sysroot, problems: Problems) -> None:
    """Configuration extensions need systemd-confext (systemd 254 and later)."""
    confexts = _items(settings, "confexts")
    if confexts and find_unit(sysroot, "systemd-confext.service") is None:
        problems.add(
            confexts[0][1],
            "confexts",
            "the sysroot's systemd has no systemd-confext.service (systemd 254 and later)",
        )


def _check_authorized_keys(settings: Settings, problems: Problems) -> None:
    """Each inline key is one, each key file (on this machine) holds keys and nothing else."""
    for item, source in _items(settings, "ssh_authorized_keys"):
        try:
            read_authorized_keys(item)
        except BookendError as exc:
            problems.add(source, "ssh_authorized_keys", str(exc))


def _check_detection_trees(settings: Settings, problems: Problems) -> None:
    """Hostonly detection reads the host's devices and mounts from these."""
    if settings.values["mode"] is not ModuleMode.HOSTONLY:
        return
    for key, needed in DETECTION_TREES.items():
        tree: Path = settings.values[key]
        source = settings.origins[key]
        if not os.path.isdir(tree):
            problems.add(source, key, f"{tree} is not a directory")
        elif not os.path.exists(tree / needed):
            problems.add(source, key, f"{tree} is not a {key} (no {needed})")
    # LUKS2 headers are read from here (the token features); a container may have no
    # /dev/block, so only the directory itself must be there.
    devfs: Path = settings.values["devfs"]
    if not os.path.isdir(devfs):
        problems.add(settings.origins["devfs"], "devfs", f"{devfs} is not a directory")
