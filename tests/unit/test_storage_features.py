"""The storage features' own data: crypttab and mdadm.conf filtering, fstab marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.features import ALL
from bookend.features.filesystems import initrd_mounts
from bookend.features.luks import crypttab_for
from bookend.features.mdraid import mdadm_conf
from bookend.plan import make_plan
from tests.unit.conftest import load_config


def test_crypttab_keeps_named_volumes_and_reports_missing_ones() -> None:
    text = "a UUID=1 none luks\n#b UUID=2 none\nb UUID=2 /k luks\n\nc /dev/x none\n"
    crypttab = crypttab_for(text, ("b", "z"))
    assert crypttab.text.splitlines()[1:] == ["b UUID=2 /k luks"]
    assert crypttab.missing == ("z",)


def test_mdadm_conf_keeps_assembly_lines_only() -> None:
    sysroot_conf = (
        "# mdadm.conf\nHOMEHOST <system>\nMAILADDR root\n"
        "ARRAY /dev/md/root metadata=1.2 UUID=1:2:3:4\n   name=host:root\n"
        "PROGRAM /usr/bin/alert\n   --loud\nDEV /dev/sd*\n"
    )
    assert mdadm_conf(sysroot_conf).splitlines()[1:] == [
        "HOMEHOST <system>",
        "ARRAY /dev/md/root metadata=1.2 UUID=1:2:3:4",
        "   name=host:root",
        "DEV /dev/sd*",
    ]
    assert mdadm_conf(None).count("\n") == 1


def test_initrd_mounts_from_fstab() -> None:
    fstab = (
        "UUID=1 / ext4 defaults,x-initrd.mount 0 1\n"
        "UUID=2 /var xfs x-initrd.mount,noatime 0 2\n"
        "UUID=3 /home ext4 defaults 0 2\n"
        "# UUID=4 /old ext4 x-initrd.mount 0 2\n"
    )
    assert initrd_mounts(fstab) == [("/var", "xfs")]


PROGRAMS = {
    "/usr/sbin/lvm": "lvm",
    "/usr/sbin/mdadm": "mdraid",
    "/usr/bin/btrfs": "btrfs",
    "/usr/lib/systemd/systemd-cryptsetup": "luks",
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_generic_mode_enables_storage_features_whose_program_exists(
    root_tree: Path, program: str
) -> None:
    (root_tree / program.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root_tree / program.lstrip("/")).write_text("")
    config = load_config(None, {"sysroot": str(root_tree), "mode": "generic"})
    storage = {name for name in make_plan(config).features if ALL[name].switch_on.program}
    assert storage == {PROGRAMS[program]}


def test_keyfiles_must_be_absolute(root_tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"keyfiles: 'root\.key' is not an absolute path"):
        load_config(None, {"sysroot": str(root_tree), "keyfiles": ["root.key"]})
