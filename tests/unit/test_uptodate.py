"""A build with unchanged inputs leaves the images alone; any change rebuilds them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bookend import build, cli
from bookend.plan import Plan
from bookend.scancache import ScanCache
from bookend.uptodate import record_path
from tests.unit.conftest import make_root_tree, stand_in_plan
from tests.unit.elftree import install_libc

KVER = "6.1.0-test"
SCRIPT = "#!/bin/sh\nexec true\n"

# systemd stands in as a script, so its #! brings the shell and the shell its libraries;
# /etc/bookend-extra is a directory taken whole, so a file added there changes the closure.
PLAN = stand_in_plan("/etc/bookend-extra")


@pytest.fixture
def sysroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_root_tree(tmp_path / "sysroot", KVER)
    install_libc(root)
    shutil.copy("/usr/bin/dash", root / "usr/bin/dash")
    (root / "usr/bin/sh").symlink_to("dash")
    (root / "usr/lib/systemd").mkdir()
    for name in ("systemd", "systemd-shutdown"):  # the exitrd's /shutdown
        (root / "usr/lib/systemd" / name).write_text(SCRIPT)
        (root / "usr/lib/systemd" / name).chmod(0o755)
    (root / "etc/bookend-extra").mkdir()
    (root / "etc/bookend-extra/a.conf").write_text("a\n")

    def fixture_plan(
        config: object, cache: ScanCache | None = None, registry: object = None
    ) -> Plan:
        return PLAN  # the features' real programs are not in a fixture tree

    monkeypatch.setattr(build, "make_plan", fixture_plan)
    monkeypatch.setenv("BOOKEND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return root


def run_build(sysroot: Path, output: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    argv = ["build", "--sysroot", str(sysroot), "--kver", KVER, "-o", str(output), *flags]
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def outputs(output: Path) -> list[Path]:
    exitrd = output.with_name("exitrd.img")
    return [output, exitrd, exitrd.with_name("exitrd.img.sha256")]


def identities(paths: list[Path]) -> list[tuple[int, int, bytes]]:
    return [(p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in paths]


def test_unchanged_inputs_leave_every_image_untouched(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "initrd.img"
    first = run_build(sysroot, output, capsys)
    assert "up to date" not in first
    before = identities(outputs(output))
    again = run_build(sysroot, output, capsys).splitlines()
    assert [line.split(": ")[0] for line in again] == [str(p) for p in outputs(output)[:2]]
    assert all(": up to date, not rewritten: " in line for line in again)
    assert identities(outputs(output)) == before


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _rewrite_keeping_mtime(path: Path) -> None:
    """Same size, same mtime, other bytes: only ctime tells."""
    st = path.stat()
    path.write_text(SCRIPT.replace("true", "echo"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _record(output: Path) -> Path:
    return record_path(output.parent / "cache", output)


# What a change returns (write_text's count, for some) is ignored.
CHANGES: dict[str, Callable[[Path, Path], object]] = {
    "a source file touched": lambda root, out: _touch(root / "usr/lib/systemd/systemd"),
    "a source file rewritten under its old mtime": lambda root, out: _rewrite_keeping_mtime(
        root / "usr/lib/systemd/systemd"
    ),
    "a file added where the closure takes a whole directory": lambda root, out: (
        root / "etc/bookend-extra/b.conf"
    ).write_text("b\n"),
    "the initrd corrupted": lambda root, out: _flip_a_byte(out),
    "the exitrd corrupted": lambda root, out: _flip_a_byte(out.with_name("exitrd.img")),
    "the exitrd's digest removed": lambda root, out: out.with_name("exitrd.img.sha256").unlink(),
    "the initrd's mode changed": lambda root, out: out.chmod(0o600),
    "the record removed": lambda root, out: _record(out).unlink(),
    "the record corrupted": lambda root, out: _record(out).write_text("{"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_to_the_inputs_or_outputs_rebuilds(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    output = tmp_path / "initrd.img"
    run_build(sysroot, output, capsys)
    CHANGES[change](sysroot, output)
    inode = output.stat().st_ino
    rebuilt = run_build(sysroot, output, capsys)
    assert "up to date" not in rebuilt
    assert output.stat().st_ino != inode  # a new file renamed into place
    assert "up to date" in run_build(sysroot, output, capsys)  # and recorded again


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        (["--compress-level", "3"], {}),
        (["--compress", "gzip"], {}),
        (["--root", "/dev/vda1"], {}),
        (["--rebuild"], {}),
        ([], {"SOURCE_DATE_EPOCH": "1700000000"}),
    ],
)
def test_another_setting_or_rebuild_builds_again(
    sysroot: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    environ: dict[str, str],
) -> None:
    output = tmp_path / "initrd.img"
    run_build(sysroot, output, capsys)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    inode = output.stat().st_ino
    assert "up to date" not in run_build(sysroot, output, capsys, *flags)
    assert output.stat().st_ino != inode


def test_a_rebuild_after_a_change_back_is_byte_identical(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "initrd.img"
    run_build(sysroot, output, capsys)
    first = [p.read_bytes() for p in outputs(output)]
    _flip_a_byte(output)
    run_build(sysroot, output, capsys)
    assert [p.read_bytes() for p in outputs(output)] == first


def test_the_record_is_kept_in_the_cache_not_beside_the_images(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "boot"
    images.mkdir()
    run_build(sysroot, images / "initrd.img", capsys)
    assert sorted(os.listdir(images)) == ["exitrd.img", "exitrd.img.sha256", "initrd.img"]
    assert record_path(tmp_path / "cache", images / "initrd.img").is_file()


def test_each_output_has_its_own_record(
    sysroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    run_build(sysroot, one / "initrd.img", capsys)
    run_build(sysroot, two / "initrd.img", capsys, "--compress", "gzip")
    assert "up to date" in run_build(sysroot, one / "initrd.img", capsys)
    assert "up to date" in run_build(sysroot, two / "initrd.img", capsys, "--compress", "gzip")


def test_without_a_cache_directory_every_build_writes(
    sysroot: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOOKEND_CACHE_DIR", "")
    output = tmp_path / "initrd.img"
    run_build(sysroot, output, capsys)
    inode = output.stat().st_ino
    assert "up to date" not in run_build(sysroot, output, capsys)
    assert output.stat().st_ino != inode
