"""What features declare beyond their files: what switches them on, the storage kind they
serve, and their part of the exitrd; and that the plan reads it without naming them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import bookend.exitrd
import bookend.plan
from bookend.archive import ArchiveEntry, EntryKind
from bookend.config import Config
from bookend.exitrd import make_exitrd_plan
from bookend.features import ALL, DEFAULT, luks
from bookend.features.base import (
    FeatureContext,
    Generated,
    Request,
    RequestKind,
    split_contribution,
)
from bookend.features.mdraid import STOP_HOOK as MD_STOP_HOOK
from bookend.features.storage_daemons import DETACH_DIR, STOP_HOOK, STOP_SCRIPT
from bookend.hostonly import DM_UUID_RULES
from bookend.plan import Plan, make_plan
from bookend.storage import HostDetection, StorageKind
from tests.unit.conftest import load_config

EVERY_IMAGE = {"systemd", "udev", "kmod", "filesystems", "emergency", "release"}
DAEMON = "[Service]\nExecStart=/usr/sbin/storaged\n"


def generic_features(root: Path, **values: object) -> set[str]:
    """Generic mode: no host detection, storage features only by their programs."""
    config = load_config(None, {"sysroot": str(root), "mode": "generic", **values})
    return set(make_plan(config).features)


def test_systemd_alone_is_always_on_and_brings_what_it_requires(root_tree: Path) -> None:
    assert DEFAULT == ("systemd",)
    # A bare sysroot has no storage program and nothing is configured.
    assert generic_features(root_tree) == EVERY_IMAGE


@pytest.mark.parametrize(
    ("values", "feature"),
    [
        ({"activation": "/sbin/activate"}, "activation"),
        ({"hooks": ["pre-mount=true"]}, "hooks"),
        ({"storage_daemons": ["storaged.service"]}, "storage-daemons"),
        ({"network_files": ["/etc/net/10-up.network"]}, "network"),
        ({"host_network_files": True}, "network"),
    ],
)
def test_a_setting_that_is_set_switches_on_its_feature(
    root_tree: Path, values: dict[str, object], feature: str
) -> None:
    (root_tree / "usr/lib/systemd/system").mkdir(parents=True)
    (root_tree / "usr/lib/systemd/system/storaged.service").write_text(DAEMON)
    (root_tree / "etc/net").mkdir()
    (root_tree / "etc/net/10-up.network").write_text("[Match]\nName=ens3\n")
    assert generic_features(root_tree, **values) - EVERY_IMAGE == {feature}


def test_settings_that_switch_features_on_are_config_fields() -> None:
    declared = {setting for f in ALL.values() for setting in f.switch_on.settings}
    assert declared == {
        *("activation", "hooks", "storage_daemons", "network_files", "host_network_files", "units"),
        "ssh_authorized_keys",
        *("keymap", "console_font"),
        "splash",
        "uki",  # pcrphase
        *("credentials", "sysexts", "confexts"),
        "verity_certificates",  # signed-extensions
    }
    assert declared <= {field.name for field in dataclasses.fields(Config)}


def test_features_required_by_one_switched_on_come_first(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree), "mode": "generic", "features": ["lvm"]})
    features = make_plan(config).features
    assert set(features) - EVERY_IMAGE == {"dm", "lvm"}
    assert features.index("dm") < features.index("lvm")


def test_no_feature_setting_or_storage_kind_is_named_by_the_plan_or_the_exitrd() -> None:
    names = {*ALL, *(setting for f in ALL.values() for setting in f.switch_on.settings)}
    names |= {kind.value for kind in StorageKind}
    for module in (bookend.plan, bookend.exitrd):
        assert module.__file__ is not None
        source = Path(module.__file__).read_text()
        assert [name for name in sorted(names) if f'"{name}"' in source] == []


# --- the exitrd's part --------------------------------------------------------------

# dm, luks and lvm have none: systemd-shutdown removes DM devices itself.
EXITRD_TOOLS = {
    "mdraid": {("mdadm", False), ("mdmon", True), ("/bin/sh", False)},
    "btrfs": {("btrfs", False), ("fsck.btrfs", True), ("btrfsck", True)},
    "storage-daemons": {("/bin/sh", False), ("sleep", False)},
    # Computed: the sysroot's own programs.
    "nbd": {("/usr/sbin/nbd-client", False)},
    "iscsi": {("/usr/sbin/iscsiadm", False), ("/usr/bin/mkdir", False), ("/usr/bin/mount", False)},
    "nfs": {("/bin/sh", False), ("umount", False)},
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_exitrd_part_of_each_feature(name: str, root_tree: Path) -> None:
    for program in ("sbin/nbd-client", "sbin/iscsiadm", "bin/mkdir", "bin/mount"):
        (root_tree / "usr" / program).write_text("")
    context = FeatureContext(load_config(None, {"sysroot": str(root_tree)}))
    items = ALL[name].exitrd_contribution(context)
    requests, generated = split_contribution(items)
    assert {(r.name, r.optional) for r in requests} == EXITRD_TOOLS.get(name, set())
    assert {r.kind for r in requests} <= {RequestKind.EXECUTABLE}
    if name == "storage-daemons":
        [hook] = [g.entry for g in generated]
        assert (hook.path, hook.mode, hook.data) == (STOP_HOOK, 0o755, STOP_SCRIPT.encode())
        assert {i.reason for i in items} == {
            "exitrd: stop the root storage daemons (storage_daemons)"
        }
    elif name == "mdraid":
        [hook] = [g.entry for g in generated]
        assert (hook.path, hook.mode) == (MD_STOP_HOOK, 0o755)
        assert b'mdadm --stop "/dev/$dev"' in (hook.data or b"")
        assert {i.reason for i in items} == {"exitrd: stop the MD arrays (mdraid)"}
    elif name in ("nbd", "iscsi", "nfs"):
        [step] = [g.entry for g in generated if g.entry.kind is EntryKind.FILE]
        # iscsiadm refuses every request, a logout too, without its record directory.
        directories = [g.entry.path for g in generated if g.entry.kind is EntryKind.DIRECTORY]
        assert directories == (["/etc/iscsi"] if name == "iscsi" else [])
        assert step.path.startswith(f"{DETACH_DIR}/") and step.mode == 0o755
        detach = {
            "nbd": b"/usr/sbin/nbd-client -d",
            "iscsi": b"/usr/sbin/iscsiadm -m session",
            "nfs": b'umount -f -l "$point"',
        }[name]
        assert detach in (step.data or b"")
    else:
        assert generated == []
        assert {i.reason for i in items} <= {f"exitrd: storage tools of feature {name}"}


def test_exitrd_takes_the_parts_of_the_initrds_features_only(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree)})
    initrd = Plan(features=(*sorted(EVERY_IMAGE), "dm", "btrfs"), requests=(), generated=())
    exitrd = make_exitrd_plan(config, initrd)
    tools = {(r.name, r.reason) for r in exitrd.requests if r.reason.startswith("exitrd: ")}
    tools -= {(r.name, r.reason) for r in make_exitrd_plan(config, Plan((), (), ())).requests}
    # btrfs's tools, and the hook that names what holds storage, with its shell: a
    # plain root's exitrd has neither.
    assert tools == {
        ("btrfs", "exitrd: storage tools of feature btrfs"),
        ("fsck.btrfs", "exitrd: storage tools of feature btrfs"),
        ("btrfsck", "exitrd: storage tools of feature btrfs"),
        ("/bin/sh", "exitrd: name what still holds the old root's storage"),
    }
    assert STOP_HOOK not in {g.entry.path for g in exitrd.generated}


# --- what the luks feature computes -----------------------------------------------

CRYPTTAB = "root UUID=1 none luks\nswap /dev/sda3 /dev/urandom swap\n"


def test_luks_writes_the_crypttab_from_hostonly_detection_only(root_tree: Path) -> None:
    (root_tree / "etc/crypttab").write_text(CRYPTTAB)
    config = load_config(None, {"sysroot": str(root_tree)})
    detection = HostDetection(
        modules=(),
        filesystems=("ext4",),
        block_devices=("dm-0", "sda2", "sda"),
        storage=((StorageKind.LUKS, "LUKS volume dm-0 under / (ext4 on /dev/dm-0)"),),
        crypt_volumes=("root",),
    )
    compute = luks.FEATURE.compute
    assert compute is not None

    def crypttab(context: FeatureContext) -> bytes | None:
        files = {g.entry.path: g.entry.data for g in split_contribution(compute(context))[1]}
        return files.get("/etc/crypttab")

    assert crypttab(FeatureContext(config, detection)) == (
        b"# Written by bookend: the sysroot's entries for the volumes / and /usr need.\n"
        b"root UUID=1 none luks\n"
    )
    assert crypttab(FeatureContext(config)) is None  # generic: no detection, no crypttab


def test_the_luks_crypto_modules_are_one_list() -> None:
    optional = [
        r.name for r in luks.FEATURE.requests() if r.kind is RequestKind.MODULE and r.optional
    ]
    assert optional == list(luks.DEFAULT_CRYPTO)
    [rule] = [rule for rule in DM_UUID_RULES if rule.prefix == "CRYPT-LUKS"]
    assert rule.modules == ("dm_crypt", *luks.DEFAULT_CRYPTO)


def test_split_contribution_keeps_each_order() -> None:
    first, second = (Request(RequestKind.EXECUTABLE, name, "test") for name in ("a", "b"))
    entries = [Generated(ArchiveEntry(p, EntryKind.DIRECTORY, 0o755), "test") for p in ("/x", "/y")]
    requests, generated = split_contribution([entries[0], first, entries[1], second])
    assert (requests, generated) == ([first, second], entries)
