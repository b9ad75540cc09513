"""bench/featuresizes.py's pure parts: which images it builds, and its tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.featuresizes import (
    BASE,
    GROUPS,
    WITH_LUKS,
    WITH_NETWORK,
    Built,
    Sizes,
    Variant,
    network_storage_features,
    network_variants,
    render_table,
    unlock_variants,
)
from bookend.features import ALL
from bookend.features.base import Feature
from bookend.storage import StorageKind

MIB = 2**20


def test_every_feature_serving_network_storage_gets_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"nbd", "iscsi"} <= set(network_storage_features())
    assert "network" not in network_storage_features()
    assert [v.name for v in network_variants()[:2]] == ["base", "base + network"]
    # A feature that declares it serves NFS (as the nfs feature will) is picked up.
    nfs = Feature(name="nfs-probe", help="probe", serves=StorageKind.NFS)
    monkeypatch.setattr("bench.featuresizes.ALL", {**ALL, "nfs-probe": nfs})
    assert network_variants()[-1] == Variant("base + nfs-probe", ("nfs-probe",))


def sizes(compressed_mib: float, content_mib: float, files: int) -> Sizes:
    return Sizes(int(compressed_mib * MIB), int(content_mib * MIB), files)


def test_table_rows_say_what_each_adds_over_base_and_over_network() -> None:
    nbd = Variant("base + nbd", ("nbd",))
    built = [
        Built(BASE, "hostonly", sizes(9, 25, 276), sizes(6, 15, 64)),
        Built(WITH_NETWORK, "hostonly", sizes(10, 28, 336), sizes(6, 15, 64)),
        Built(nbd, "hostonly", sizes(12.5, 35, 364), sizes(8.5, 22, 97)),
        Built(BASE, "generic", sizes(27, 105, 1080), sizes(9, 24, 108)),
    ]
    lines = render_table(built, "hostonly", "initrd")
    assert lines[:2] == [
        "| initrd (hostonly) | compressed | content | files | over base | over base + network |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert rows == [
        ["base", "9.00 MiB", "25.00 MiB", "276", "-", "-"],
        ["base + network", "10.00 MiB", "28.00 MiB", "336", "+1.00 MiB (+3.00 MiB, +60 files)",
         "-"],
        ["base + nbd", "12.50 MiB", "35.00 MiB", "364", "+3.50 MiB (+10.00 MiB, +88 files)",
         "+2.50 MiB (+7.00 MiB, +28 files)"],
    ]  # fmt: skip
    exitrd = render_table(built, "hostonly", "exitrd")
    assert (
        "| base + network | 6.00 MiB | 15.00 MiB | 64 | +0.00 MiB (+0.00 MiB, +0 files) | - |"
        in (exitrd)
    )
    smaller = dataclasses.replace(built[2], initrd=sizes(8.5, 24, 270))
    row = render_table([built[0], smaller], "hostonly", "initrd")[3]
    assert "-0.50 MiB (-1.00 MiB, -6 files)" in row


def test_unlock_rows_each_add_one_way_to_open_luks(tmp_path: Path) -> None:
    rows = unlock_variants(tmp_path)
    assert rows[:2] == [BASE, WITH_LUKS]
    assert all(row.features[0] == "luks" and len(row.features) == 2 for row in rows[2:])
    assert [row.features[1] for row in rows[2:]] == [
        *("tpm2", "fido2", "pkcs11", "ssh", "vconsole", "plymouth", "plymouth"),
    ]
    ssh = next(row for row in rows if "ssh" in row.features)
    # The run's own key, made once in the work directory.
    assert ssh.options == ("--ssh-authorized-keys", str(tmp_path / "ssh-key.pub"))
    assert (tmp_path / "ssh-key.pub").read_text().startswith("ssh-ed25519 ")
    assert len({row.name for row in rows}) == len(rows)


def test_the_second_column_compares_with_the_groups_reference() -> None:
    tpm2 = Variant("base + luks + tpm2", ("luks", "tpm2"))
    built = [
        Built(BASE, "hostonly", sizes(9, 25, 276), sizes(6, 15, 64)),
        Built(WITH_LUKS, "hostonly", sizes(12, 30, 300), sizes(6, 15, 70)),
        Built(tpm2, "hostonly", sizes(12.5, 31, 310), sizes(6, 15, 70)),
    ]
    lines = render_table(built, "hostonly", "initrd", GROUPS["unlock"].reference)
    assert lines[0].endswith("| over base | over base + luks |")
    assert lines[-1].split("|")[-2].strip() == "+0.50 MiB (+1.00 MiB, +10 files)"
