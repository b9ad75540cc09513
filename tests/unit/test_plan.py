from __future__ import annotations

from pathlib import Path

import pytest

from bookend.archive import EntryKind
from bookend.errors import ConfigError
from bookend.features import ALL
from bookend.features.base import FeatureContext, RequestKind
from bookend.features.kmod import modules_to_load
from bookend.plan import Plan, enabled_features, make_plan
from bookend.storage import HostDetection
from tests.unit.conftest import load_config


def plan_for(sysroot: Path, **values: object) -> Plan:
    return make_plan(load_config(None, {"sysroot": str(sysroot), **values}))


def generated(plan: Plan) -> dict[str, bytes | str | None]:
    return {
        g.entry.path: g.entry.target if g.entry.kind is EntryKind.SYMLINK else g.entry.data
        for g in plan.generated
    }


def test_features_come_after_what_they_require() -> None:
    names = [f.name for f in enabled_features(["systemd"])]
    assert names[-1] == "systemd"
    assert set(names) == {"systemd", "udev", "kmod", "filesystems", "emergency", "release"}


def test_unknown_feature_suggests(root_tree: Path) -> None:
    # The configuration checks configured names: the plan never meets an unknown one.
    with pytest.raises(ConfigError) as error:
        load_config(None, {"sysroot": str(root_tree), "features": ["sytemd"]})
    assert str(error.value) == (
        "command line: features: unknown feature 'sytemd' (did you mean 'systemd'?)"
    )


def test_every_required_feature_is_a_feature() -> None:
    for feature in ALL.values():
        assert set(feature.requires) <= set(ALL), feature.name
        assert [f.name for f in enabled_features([feature.name])][-1] == feature.name


def test_initrd_identity_and_init(root_tree: Path) -> None:
    files = generated(plan_for(root_tree))
    assert files["/init"] == "usr/lib/systemd/systemd"
    release = files["/etc/initrd-release"]
    assert isinstance(release, bytes)
    assert b'PRETTY_NAME="Fixture OS 1 (bookend initrd)"' in release
    assert b'VARIANT_ID="bookend-initrd"' in release
    assert files["/etc/os-release"] == "initrd-release"


def test_default_target_is_the_initrd_target(root_tree: Path) -> None:
    # systemd-sulogin-shell resumes the boot through default.target once the shell ends.
    files = generated(plan_for(root_tree))
    assert files["/etc/systemd/system/default.target"] == "/usr/lib/systemd/system/initrd.target"


def test_root_is_locked_by_default(root_tree: Path) -> None:
    files = generated(plan_for(root_tree))
    assert files["/etc/shadow"] == b"root:!*:1::::::\n"
    assert not any("bookend-unlocked" in path for path in files)


def test_unlocked_emergency_shell_forces_sulogin(root_tree: Path) -> None:
    files = generated(plan_for(root_tree, emergency_shell="unlocked"))
    dropin = files["/etc/systemd/system/emergency.service.d/bookend-unlocked.conf"]
    assert dropin == b"[Service]\nEnvironment=SYSTEMD_SULOGIN_FORCE=1\n"


def test_password_hash_goes_to_shadow(root_tree: Path) -> None:
    files = generated(plan_for(root_tree, emergency_shell="$6$abc$def"))
    assert files["/etc/shadow"] == b"root:$6$abc$def:1::::::\n"


def test_configured_modules_loaded_at_boot_and_requested(root_tree: Path) -> None:
    # The configuration accepts only modules the kernel's database knows.
    modules_dep = root_tree / "usr/lib/modules/6.1.0-test/modules.dep"
    modules_dep.write_text("kernel/drivers/block/virtio_blk.ko:\n")
    plan = plan_for(root_tree, modules=["virtio_blk"], filesystems=["ext4"], root="LABEL=r")
    files = generated(plan)
    assert files["/etc/modules-load.d/bookend.conf"] == (
        b"# Written by bookend: modules named in its configuration.\nvirtio_blk\n"
    )
    modules = {(r.name, r.optional) for r in plan.requests if r.kind is RequestKind.MODULE}
    assert {("virtio_blk", False), ("ext4", True)} <= modules
    fstab = files["/etc/fstab"]
    assert isinstance(fstab, bytes) and b"LABEL=r /sysroot ext4 defaults 0 1\n" in fstab


def test_hostonly_loads_its_detected_filesystems_at_boot(root_tree: Path) -> None:
    config = load_config(
        None, {"sysroot": str(root_tree), "modules": [], "filesystems": ["ext4", "vfat"]}
    )
    detection = HostDetection(
        modules=(("virtio_blk", "disk vda"), ("ext4", "filesystem of /")),
        filesystems=("ext4",),
        block_devices=("vda",),
        storage=(),
    )
    # ext4 ahead of the mount; vfat is configured but detection found no module for it.
    assert modules_to_load(FeatureContext(config, detection)) == ["ext4"]
    # Generic images name every filesystem: those stay on demand.
    assert modules_to_load(FeatureContext(config, None)) == []
