"""The plan: what the enabled features and the configuration ask the image to hold.

Plain data in (a Config), plain data out (a Plan); nothing is read from the sysroot
here except what a feature's `compute` needs to generate a file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from bookend import hostonly, kmodules, microcode
from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, ModuleMode
from bookend.drivers import GENERIC_CLASSES, GENERIC_FILESYSTEMS
from bookend.errors import ConfigError
from bookend.features import ALL, DEFAULT, STORAGE, filesystems, luks
from bookend.features.base import Feature, Generated, Request, RequestKind
from bookend.scancache import ScanCache
from bookend.sysroot import Sysroot

log = logging.getLogger(__name__)

# Where a hostonly image records what detection found, for people and for tests.
HOSTONLY_RECORD = "/usr/lib/bookend/hostonly-modules.txt"


@dataclass(frozen=True)
class Plan:
    features: tuple[str, ...]  # enabled, dependencies first
    requests: tuple[Request, ...]
    generated: tuple[Generated, ...]
    detection: hostonly.HostDetection | None = None  # what hostonly mode found
    microcode_vendors: tuple[str, ...] = ()  # CPU vendors whose early microcode goes first


def enabled_features(names: Iterable[str], source: str = "features") -> list[Feature]:
    """The named features and everything they require, each before its dependents."""
    ordered: dict[str, Feature] = {}

    def visit(name: str, wanted_by: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        feature = ALL.get(name)
        if feature is None:
            from bookend.config import did_you_mean

            raise ConfigError(
                f"{wanted_by}: unknown feature '{name}'" + did_you_mean(name, list(ALL))
            )
        if name in path:
            raise ConfigError(f"feature {name}: requires itself via {' -> '.join(path)}")
        for required in feature.requires:
            visit(required, f"feature {name}", (*path, name))
        ordered[name] = feature

    for name in names:
        visit(name, source, ())
    return list(ordered.values())


def config_requests(config: Config) -> list[Request]:
    """What the user named directly."""
    requests = [
        Request(RequestKind.MODULE, name, f"modules ({config.origin_of('modules', index)})")
        for index, name in enumerate(config.modules)
    ]
    requests += [
        Request(RequestKind.PATH, name, f"files ({config.origin_of('files', index)})")
        for index, name in enumerate(config.files)
    ]
    return requests


def module_mode_requests(
    config: Config, cache: ScanCache
) -> tuple[Config, list[Request | Generated], hostonly.HostDetection | None]:
    """Generic: every driver class. Hostonly: what this machine's root and /usr sit on.

    Filesystems found or implied join the configuration's own, so the filesystems
    feature brings their fsck and mount helpers as if the user had named them; so do
    the storage features (luks, lvm, ...) the mounts stand on.
    """
    sysroot = Sysroot(config.sysroot)
    initrd_mounts = filesystems.initrd_mounts(sysroot.read_text("/etc/fstab") or "")
    config = _extended(config, filesystems=[fstype for _, fstype in initrd_mounts])
    classes = list(config.driver_classes)
    if config.mode is ModuleMode.GENERIC:
        classes = list(dict.fromkeys([*GENERIC_CLASSES, *classes]))
        present = [f.name for f in STORAGE if f.program and sysroot.exists(f.program)]
        extended = _extended(config, filesystems=GENERIC_FILESYSTEMS, features=present)
        return extended, [_class_request(name, "mode generic") for name in classes], None
    origin = config.origins.get("driver_classes", "config")
    items: list[Request | Generated] = [
        _class_request(name, f"driver_classes ({origin})") for name in classes
    ]
    db = kmodules.shared_database(sysroot, config.kver, cache)
    points = ("/", "/usr", *(point for point, _ in initrd_mounts))
    found = hostonly.detect_host(config.sysfs, config.procfs, db, points)
    items += [
        Request(RequestKind.MODULE, name, f"hostonly: {reason}", optional=True)
        for name, reason in found.modules
    ]
    record = hostonly.format_detection(found).encode()
    items.append(
        Generated(
            ArchiveEntry(HOSTONLY_RECORD, EntryKind.FILE, 0o644, data=record),
            "hostonly: what detection found",
        )
    )
    if found.crypt_volumes:
        items.append(_crypttab(sysroot, found.crypt_volumes))
    storage = [f.name for f in STORAGE if f.storage in found.storage]
    return _extended(config, filesystems=found.filesystems, features=storage), items, found


def _extended(
    config: Config, *, filesystems: Iterable[str] = (), features: Iterable[str] = ()
) -> Config:
    """config with more filesystems and features, each once, the configured ones first."""
    return dataclasses.replace(
        config,
        filesystems=tuple(dict.fromkeys([*config.filesystems, *filesystems])),
        features=tuple(dict.fromkeys([*config.features, *features])),
    )


def _crypttab(sysroot: Sysroot, volumes: tuple[str, ...]) -> Generated:
    crypttab = luks.crypttab_for(sysroot.read_text("/etc/crypttab") or "", volumes)
    for volume in crypttab.missing:
        log.warning(
            "LUKS volume %s is under / or /usr but not in %s; "
            "the kernel command line must name it (rd.luks.uuid=)",
            volume,
            sysroot.host_path("/etc/crypttab"),
        )
    entry = ArchiveEntry("/etc/crypttab", EntryKind.FILE, 0o644, data=crypttab.text.encode())
    return Generated(entry, "hostonly: crypttab entries of the volumes / and /usr need")


def _class_request(name: str, reason: str) -> Request:
    return Request(RequestKind.DRIVER_CLASS, name, reason, optional=True)


def microcode_vendors(config: Config) -> tuple[str, ...]:
    """Generic: every vendor the kernel loads early microcode for. Hostonly: this CPU's."""
    if not config.microcode:
        return ()
    if config.mode is ModuleMode.GENERIC:
        return tuple(microcode.SOURCES)
    vendor = microcode.cpu_vendor(config.procfs)
    return (vendor,) if vendor in microcode.SOURCES else ()


def make_plan(config: Config, cache: ScanCache | None = None) -> Plan:
    """The plan for config; cache, if given, is shared with the closure built from it."""
    config, mode_items, detection = module_mode_requests(config, cache or ScanCache(None))
    # Configuring an activation, hooks or daemons is asking for the feature that runs them.
    wanted = (
        ("activation", config.activation),
        ("hooks", config.hooks),
        ("storage-daemons", config.storage_daemons),
        ("network", config.network_files),
    )
    implied = [name for name, configured in wanted if configured]
    features = enabled_features([*DEFAULT, *config.features, *implied])
    requests: list[Request] = []
    generated: list[Generated] = []
    for feature in features:
        requests += feature.requests()
        for item in feature.compute(config) if feature.compute else ():
            if isinstance(item, Request):
                requests.append(item)
            else:
                generated.append(item)
    requests += config_requests(config)
    for item in mode_items:
        if isinstance(item, Request):
            requests.append(item)
        else:
            generated.append(item)
    return Plan(
        features=tuple(f.name for f in features),
        requests=tuple(requests),
        generated=tuple(generated),
        detection=detection,
        microcode_vendors=microcode_vendors(config),
    )


def format_plan(plan: Plan) -> str:
    """The plan as text, one request a line, grouped by feature order."""
    lines = [f"features: {', '.join(plan.features)}"]
    if plan.microcode_vendors:
        lines.append(f"microcode: {', '.join(plan.microcode_vendors)} (early, uncompressed)")
    for request in plan.requests:
        optional = " (if present)" if request.optional else ""
        lines.append(f"{request.kind.value:11} {request.name}{optional}  <- {request.reason}")
    for item in plan.generated:
        lines.append(f"{'generated':11} {item.entry.path}  <- {item.reason}")
    return "\n".join(lines)
