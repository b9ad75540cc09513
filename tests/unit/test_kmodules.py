from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from bookend.errors import ConfigError, SysrootError
from bookend.kmodules import (
    ModuleDatabase,
    _glob_matches,
    dependency_closure,
    load_database,
    modules_under,
    resolve_request,
    shared_database,
)
from bookend.scancache import ScanCache
from bookend.sysroot import Sysroot

KVER = "6.1.0-test"


@pytest.fixture
def moddb_root(root_tree: Path) -> Path:
    moddir = root_tree / "usr/lib/modules" / KVER
    (moddir / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.zst\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n"
        "kernel/fs/mbcache.ko.zst:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n"
        "kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
    )
    (moddir / "modules.alias").write_text(
        "# Aliases extracted from modules themselves.\n"
        "alias fs-ext4 ext4\n"
        "alias crypto-crc32c crc32c_generic\n"
        "alias crypto-crc32c crc32c_intel\n"
        "alias virtio:d00000002v* virtio_blk\n"
    )
    (moddir / "modules.softdep").write_text("softdep ext4 pre: crypto-crc32c post: absent-alias\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    return root_tree


def closure_names(root: Path, *names: str) -> list[tuple[str, str, str | None]]:
    db = load_database(Sysroot(root), KVER)
    roots = [
        (found, "test") for name in names for found in resolve_request(db, name, "test", False)
    ]
    return [(c.name, c.relpath, c.parent) for c in dependency_closure(db, roots)]


def test_dependencies_and_softdeps_through_aliases(moddb_root: Path) -> None:
    assert closure_names(moddb_root, "fs-ext4") == [
        ("ext4", "kernel/fs/ext4/ext4.ko.xz", None),
        ("jbd2", "kernel/fs/jbd2/jbd2.ko.xz", "ext4"),
        ("mbcache", "kernel/fs/mbcache.ko.zst", "ext4"),
        ("crc32c_generic", "kernel/crypto/crc32c_generic.ko", "ext4"),
        ("crc32c_intel", "kernel/arch/x86/crypto/crc32c-intel.ko", "ext4"),
    ]


def test_glob_alias_and_dash_underscore_names(moddb_root: Path) -> None:
    names = [
        n for n, _, _ in closure_names(moddb_root, "virtio:d00000002v00001AF4", "crc32c-intel")
    ]
    assert names == ["virtio_blk", "crc32c_intel", "virtio_ring"]


def test_builtin_module_is_no_file_and_no_error(moddb_root: Path) -> None:
    db = load_database(Sysroot(moddb_root), KVER)
    assert resolve_request(db, "virtio", "test", optional=False) == []


def test_unknown_module_names_request_and_suggests(moddb_root: Path) -> None:
    db = load_database(Sysroot(moddb_root), KVER)
    with pytest.raises(ConfigError) as error:
        resolve_request(db, "virtio-blk2", "modules (command line)", optional=False)
    assert str(error.value) == (
        "modules (command line): no kernel module or alias 'virtio-blk2' in "
        f"/lib/modules/{KVER} (did you mean 'virtio_blk'?)"
    )
    assert resolve_request(db, "virtio-blk2", "test", optional=True) == []


def test_no_modules_dep_and_no_modules_names_the_kernel(root_tree: Path) -> None:
    (root_tree / f"usr/lib/modules/{KVER}/modules.dep").unlink()
    with pytest.raises(SysrootError, match=f"no modules.dep and no modules; is the kernel {KVER}"):
        load_database(Sysroot(root_tree), KVER)


HOST_MODULES = sorted(Path("/lib/modules").glob("*/kernel/drivers/block/virtio_blk.ko"))


@pytest.mark.skipif(not HOST_MODULES, reason="no uncompressed virtio_blk.ko on this host")
def test_unconfigured_tree_is_indexed_by_the_host_depmod(root_tree: Path) -> None:
    # As debootstrap's first stage leaves a kernel: its modules, no modules.dep.
    host = HOST_MODULES[-1].parents[3]
    moddir = root_tree / "usr/lib/modules" / KVER
    (moddir / "modules.dep").unlink()
    for relpath in ("kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_ring.ko"):
        (moddir / relpath).parent.mkdir(parents=True, exist_ok=True)
        (moddir / relpath).write_bytes((host / relpath).read_bytes())
    db = load_database(Sysroot(root_tree), KVER)
    assert db.paths["virtio_blk"] == "kernel/drivers/block/virtio_blk.ko"
    assert db.deps["virtio_blk"] == ["virtio_ring"]
    assert "virtio_blk" in db.lookup("virtio:d00000002v*")
    # Nothing was written into the sysroot.
    assert not (moddir / "modules.dep").exists()


def test_weakdeps_follow_and_omit_globs_win_over_dependencies(moddb_root: Path) -> None:
    moddir = moddb_root / "usr/lib/modules" / KVER
    (moddir / "modules.weakdep").write_text("weakdep virtio_blk crc32c_generic\n")
    db = load_database(Sysroot(moddb_root), KVER)
    chosen = dependency_closure(db, [("virtio_blk", "test")])
    assert [(c.name, c.reason) for c in chosen] == [
        ("virtio_blk", "test"),
        ("virtio_ring", "dependency of module"),
        ("crc32c_generic", "weakdep of module"),
    ]
    omitted = dependency_closure(db, [("ext4", "test")], omit=["crc32c*", "mb-cache"])
    assert [c.name for c in omitted] == ["ext4", "jbd2", "mbcache"]
    omitted = dependency_closure(db, [("ext4", "test")], omit=["crc32c*", "mbcache"])
    assert [c.name for c in omitted] == ["ext4", "jbd2"]


def test_modules_under_directories(moddb_root: Path) -> None:
    db = load_database(Sysroot(moddb_root), KVER)
    assert modules_under(db, ["kernel/fs/", "kernel/drivers/virtio/"]) == [
        "ext4", "jbd2", "mbcache", "virtio_ring"
    ]  # fmt: skip
    assert modules_under(db, ["kernel/drivers/nvme/"]) == []


GLOBS = ("a*", "*", "**", "abc", "a?c", "[ab]*", "a*c", "*c", "a*b*c", "ab*bc", "a*a", "*b*",
         "x*", "a*c*", "abcd*", "ab*c*bc", "*abc*abc")  # fmt: skip


@pytest.mark.parametrize("pattern", GLOBS)
@pytest.mark.parametrize("name", ["", "a", "abc", "abbc", "aXbYc", "aa", "abcabc", "cba"])
def test_alias_globs_match_as_fnmatch_does(name: str, pattern: str) -> None:
    assert _glob_matches(name, pattern) == fnmatch.fnmatchcase(name, pattern)


def test_the_shared_database_comes_from_the_scan_cache_until_a_table_changes(
    moddb_root: Path, tmp_path: Path
) -> None:
    def shared() -> ModuleDatabase:
        cache = ScanCache(tmp_path / "cache")
        db = shared_database(Sysroot(moddb_root), KVER, cache)
        cache.save()
        return db

    parsed = load_database(Sysroot(moddb_root), KVER)
    assert shared() == parsed  # parsed, then stored
    assert list((tmp_path / "cache/moddb").iterdir())
    assert shared() == parsed  # read back from the cache: the same tables
    assert shared().lookup("virtio:d00000002v00001AF4") == ["virtio_blk"]
    alias = moddb_root / "usr/lib/modules" / KVER / "modules.alias"
    alias.write_text(alias.read_text() + "alias fs-ext3 ext4\n")
    assert shared().lookup("fs-ext3") == ["ext4"]
