"""The plan: what the enabled features and the configuration ask the image to hold.

Plain data in (a Config), plain data out (a Plan); nothing is read from the sysroot
here except what a feature's `compute` needs to generate a file, and what switches
features on. Which feature a setting, a storage kind or a program switches on is
declared by the feature (bookend.features.base.SwitchOn, Feature.serves): read here,
never named here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bookend import arches, hostonly, kmodules, microcode
from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config, ModuleMode
from bookend.drivers import GENERIC_CLASSES, GENERIC_FILESYSTEMS
from bookend.errors import ConfigError, SysrootError
from bookend.features import ALL, filesystems
from bookend.features.base import (
    Feature,
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    split_contribution,
)
from bookend.scancache import ScanCache
from bookend.storage import HostDetection
from bookend.sysroot import Sysroot

# Where a hostonly image records what detection found, for people and for tests.
HOSTONLY_RECORD = "/usr/lib/bookend/hostonly-modules.txt"


@dataclass(frozen=True)
class Plan:
    features: tuple[str, ...]  # enabled, dependencies first
    requests: tuple[Request, ...]
    generated: tuple[Generated, ...]
    detection: HostDetection | None = None  # what hostonly mode found
    microcode_vendors: tuple[str, ...] = ()  # CPU vendors whose early microcode goes first
    # Where the feature names are declared: bookend's own and the feature files'.
    registry: Mapping[str, Feature] = field(default_factory=lambda: ALL)


def enabled_features(names: Iterable[str], registry: Mapping[str, Feature] = ALL) -> list[Feature]:
    """The named features and everything they require, each before its dependents."""
    ordered: dict[str, Feature] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        # Configured names were checked by the configuration (against bookend.features'
        # names, passed in by the CLI); the others are the registry's own.
        feature = registry[name]
        if name in path:
            raise ConfigError(f"feature {name}: requires itself via {' -> '.join(path)}")
        for required in feature.requires:
            visit(required, (*path, name))
        ordered[name] = feature

    for name in names:
        visit(name, ())
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
) -> tuple[Config, list[Request | Generated], HostDetection | None]:
    """Generic: every driver class. Hostonly: what this machine's root and /usr sit on.

    Filesystems found or implied join the configuration's own, so the filesystems
    feature brings their fsck and mount helpers as if the user had named them.
    """
    sysroot = Sysroot(config.sysroot)
    initrd_mounts = filesystems.initrd_mounts(sysroot.read_text("/etc/fstab") or "")
    config = _extended(config, filesystems=[fstype for _, fstype in initrd_mounts])
    classes = list(config.driver_classes)
    if config.mode is ModuleMode.GENERIC:
        classes = list(dict.fromkeys([*GENERIC_CLASSES, *classes]))
        extended = _extended(config, filesystems=GENERIC_FILESYSTEMS)
        return extended, [_class_request(name, "mode generic") for name in classes], None
    origin = config.origins.get("driver_classes", "config")
    items: list[Request | Generated] = [
        _class_request(name, f"driver_classes ({origin})") for name in classes
    ]
    found = host_detection(config, cache)
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
    return _extended(config, filesystems=found.filesystems), items, found


def host_detection(config: Config, cache: ScanCache) -> HostDetection:
    """What hostonly detection finds on this machine for /, /usr and the sysroot's
    x-initrd.mount filesystems, looked up in the image kernel's module database."""
    sysroot = Sysroot(config.sysroot)
    initrd_mounts = filesystems.initrd_mounts(sysroot.read_text("/etc/fstab") or "")
    db = kmodules.shared_database(sysroot, config.kver, cache)
    points = ("/", "/usr", *(point for point, _ in initrd_mounts))
    return hostonly.detect_host(config.sysfs, config.procfs, db, points)


def _extended(config: Config, *, filesystems: Iterable[str] = ()) -> Config:
    """config with more filesystems, each once, the configured ones first."""
    return dataclasses.replace(
        config, filesystems=tuple(dict.fromkeys([*config.filesystems, *filesystems]))
    )


def switched_on(
    config: Config, detection: HostDetection | None, registry: Mapping[str, Feature] = ALL
) -> list[str]:
    """The features to enable, by what the features declare switches them on: every
    image's, the configured ones, those the storage needs, those a setting asks for,
    those whose own detection finds them needed.
    Each group in the order of the registry, so the plan is the same run after run."""
    always = [name for name, feature in registry.items() if feature.switch_on.always]
    by_setting = [
        name
        for name, feature in registry.items()
        if any(getattr(config, setting) for setting in feature.switch_on.settings)
    ]
    storage = storage_features(config, detection, registry)
    context = FeatureContext(config, detection)
    detected = [
        name
        for name, feature in registry.items()
        if feature.switch_on.detected and feature.switch_on.detected(context)
    ]
    return [*always, *config.features, *storage, *by_setting, *detected]


def storage_features(
    config: Config, detection: HostDetection | None, registry: Mapping[str, Feature] = ALL
) -> list[str]:
    """Hostonly: the features serving the storage kinds detection found; a kind no
    feature serves is an error, as an image without it could not mount the root.
    Generic: the features whose program the sysroot has."""
    if detection is None:
        sysroot = Sysroot(config.sysroot)
        return [
            name
            for name, feature in registry.items()
            if feature.switch_on.program and sysroot.exists(feature.switch_on.program)
        ]
    served = {feature.serves for feature in registry.values()}
    for kind, where in detection.storage:
        if kind not in served:
            raise SysrootError(
                f"hostonly: {where}: no feature serves {kind.value} storage, "
                "so the image could not mount it"
            )
    kinds = detection.storage_kinds
    return [name for name, feature in registry.items() if feature.serves in kinds]


def _class_request(name: str, reason: str) -> Request:
    return Request(RequestKind.DRIVER_CLASS, name, reason, optional=True)


def microcode_vendors(config: Config) -> tuple[str, ...]:
    """Generic: every vendor the kernel loads early microcode for. Hostonly: this CPU's.
    None for a sysroot of an architecture whose kernel loads none from the initrd."""
    if not config.microcode:
        return ()
    arch = arches.sysroot_arch(Sysroot(config.sysroot))
    if arch is not None and not arch.early_microcode:
        return ()
    if config.mode is ModuleMode.GENERIC:
        return tuple(microcode.SOURCES)
    vendor = microcode.cpu_vendor(config.procfs)
    return (vendor,) if vendor in microcode.SOURCES else ()


def make_plan(
    config: Config, cache: ScanCache | None = None, registry: Mapping[str, Feature] = ALL
) -> Plan:
    """The plan for config; cache, if given, is shared with the closure built from it.
    registry: the features by name, bookend's own and those of feature files."""
    config, mode_items, detection = module_mode_requests(config, cache or ScanCache(None))
    features = enabled_features(switched_on(config, detection, registry), registry)
    context = FeatureContext(config, detection)
    items: list[Request | Generated] = []
    for feature in features:
        items += feature.requests()
        items += feature.compute(context) if feature.compute else ()
    items += config_requests(config)
    requests, generated = split_contribution([*items, *mode_items])
    return Plan(
        features=tuple(f.name for f in features),
        requests=tuple(requests),
        generated=tuple(generated),
        detection=detection,
        microcode_vendors=microcode_vendors(config),
        registry=registry,
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
