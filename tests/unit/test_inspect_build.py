"""The build checks the new initrd before it replaces the old one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from bookend.archive import write_atomically
from bookend.build import _check_before_replacing
from bookend.errors import ArchiveError
from tests.unit.conftest import load_config, make_root_tree
from tests.unit.test_inspect_reader import S_IFLNK, archive, newc


def test_verify_sees_the_complete_file_before_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")
    seen: list[tuple[Path, bytes, bool]] = []

    def verify(new: Path) -> None:
        seen.append((new, new.read_bytes(), target.read_bytes() == b"old"))

    def write_new_image(out: BinaryIO) -> None:
        out.write(b"new image")

    write_atomically(target, write_new_image, verify=verify)
    assert target.read_bytes() == b"new image"
    (new, content, old_still_there), = seen  # fmt: skip
    assert content == b"new image" and old_still_there
    assert new.parent == tmp_path and new != target and not new.exists()


def test_verify_raising_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")

    def write(out: BinaryIO) -> None:
        out.write(b"bad image")

    def verify(new: Path) -> None:
        raise ArchiveError(f"{new.name}: fails")

    with pytest.raises(ArchiveError, match="fails"):
        write_atomically(target, write, verify=verify)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["initrd.img"]


@dataclass(frozen=True)
class Forced:
    force: bool


def good_image(path: Path) -> Path:
    path.write_bytes(archive(newc("etc/initrd-release", data=b"ID=x\n"),
                             newc("init", 0o100755, b"a program")))  # fmt: skip
    return path


def bad_image(path: Path) -> Path:
    path.write_bytes(archive(newc("init", S_IFLNK | 0o777, b"usr/lib/systemd/systemd")))
    return path


def test_a_failing_initrd_does_not_replace_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")
    verify = _check_before_replacing(Forced(False), target)  # type: ignore[arg-type]
    with pytest.raises(ArchiveError) as error:
        verify(bad_image(tmp_path / "new.img"))
    assert str(error.value).splitlines() == [
        f"{target}: not replaced, the new initrd fails its check (--force replaces it anyway):",
        "  /init -> /usr/lib/systemd/systemd: missing",
        "  /etc/initrd-release: missing (systemd runs as an initrd only when it is there)",
    ]


def test_a_passing_initrd_replaces(tmp_path: Path) -> None:
    target = tmp_path / "initrd.img"
    target.write_bytes(b"old")
    verify = _check_before_replacing(Forced(False), target)  # type: ignore[arg-type]
    verify(good_image(tmp_path / "new.img"))  # no exception: the rename goes ahead


@pytest.mark.parametrize("case", ["forced", "nothing to replace"])
def test_a_failing_initrd_is_written_with_a_warning(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "initrd.img"
    if case == "forced":
        target.write_bytes(b"old")
    verify = _check_before_replacing(Forced(case == "forced"), target)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        verify(bad_image(tmp_path / "new.img"))
    assert f"{target} fails its check:" in caplog.text
    assert "/init -> /usr/lib/systemd/systemd: missing" in caplog.text


def test_force_is_a_setting(tmp_path: Path) -> None:
    root = make_root_tree(tmp_path / "sysroot")
    base = {"sysroot": str(root), "kver": "6.1.0-test", "output": str(tmp_path / "i.img")}
    assert load_config(None, base).force is False
    assert load_config(None, {**base, "force": True}).force is True
    config_file = tmp_path / "bookend.toml"
    config_file.write_text("force = true\n")
    assert load_config(config_file, base).force is True
