"""The scan cache: results reused only for the same file, rescanned otherwise, never trusted."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bookend import elf, kmodules
from bookend.libsearch import LibrarySearch
from bookend.scancache import MAX_FILES, ScanCache, default_directory, stamp
from bookend.sysroot import Sysroot

TRUE = Path("/usr/bin/true")  # needs libc.so.6 only
KMOD = Path("/usr/bin/kmod")  # needs libzstd, liblzma, libcrypto and libc


class Counter:
    def __init__(self, value: object) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.value


def test_a_saved_result_is_reused_by_the_next_build(tmp_path: Path) -> None:
    first = ScanCache(tmp_path)
    compute = Counter(["needs", "x"])
    assert first.lookup("elf", "/a", [1, 2, 3, 4, 5], compute) == ["needs", "x"]
    first.save()
    again = Counter(["other"])
    assert ScanCache(tmp_path).lookup("elf", "/a", [1, 2, 3, 4, 5], again) == ["needs", "x"]
    assert (compute.calls, again.calls) == (1, 0)


@pytest.mark.parametrize(
    "changed",
    [
        [9, 2, 3, 4, 5],  # another size, the same mtime
        [1, 2, 3, 8, 5],  # the same size and mtime, another inode (a file renamed over it)
        [1, 2, 7, 4, 5],  # only ctime: content written and mtime put back
    ],
)
def test_a_changed_stamp_is_rescanned_and_replaces_the_entry(
    tmp_path: Path, changed: list[int]
) -> None:
    cache = ScanCache(tmp_path)
    cache.lookup("elf", "/a", [1, 2, 3, 4, 5], Counter("old"))
    cache.save()
    rescan = Counter("new")
    reread = ScanCache(tmp_path)
    assert reread.lookup("elf", "/a", changed, rescan) == "new"
    assert rescan.calls == 1
    reread.save()
    assert ScanCache(tmp_path).lookup("elf", "/a", changed, Counter("unused")) == "new"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        json.dumps({"format": 999, "bookend": "0.1.0", "entries": {}}).encode(),
        json.dumps({"format": 1, "bookend": "0.0.0-other", "entries": {"/a": [[1], "x"]}}).encode(),
        json.dumps({"format": 1, "bookend": "0.1.0", "entries": {"/a": "no pair"}}).encode(),
        json.dumps(["a", "list"]).encode(),
    ],
)
def test_a_corrupt_or_foreign_table_is_ignored_and_rewritten(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "elf.json").write_bytes(content)
    cache = ScanCache(tmp_path)
    compute = Counter("scanned")
    assert cache.lookup("elf", "/a", [1], compute) == "scanned"
    assert compute.calls == 1
    cache.save()
    assert ScanCache(tmp_path).lookup("elf", "/a", [1], Counter("unused")) == "scanned"


def test_an_unwritable_cache_costs_nothing_but_the_saving(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    cache = ScanCache(blocked / "cache")
    assert cache.lookup("elf", "/a", [1], Counter("scanned")) == "scanned"
    cache.save()  # logged, not raised
    assert blocked.read_text().startswith("a file")


def test_no_directory_keeps_results_for_this_build_only(tmp_path: Path) -> None:
    cache = ScanCache(None)
    compute = Counter("scanned")
    cache.lookup("elf", "/a", [1], compute)
    cache.lookup("elf", "/a", [1], compute)
    cache.save()
    assert compute.calls == 1
    assert list(tmp_path.iterdir()) == []


def test_cache_directory_follows_the_environment(tmp_path: Path) -> None:
    assert default_directory({"BOOKEND_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_directory({"BOOKEND_CACHE_DIR": ""}) is None
    assert default_directory({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "bookend"
    expected = Path("/var/cache/bookend") if os.geteuid() == 0 else Path.home() / ".cache/bookend"
    assert default_directory({}) == expected


def _tree_with(tmp_path: Path, program: Path) -> Sysroot:
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy(program, tmp_path / "usr/bin/prog")
    return Sysroot(tmp_path)


def _swap_keeping_mtime(path: Path, replacement: Path) -> None:
    """Put another program at path (a new inode), with the old one's mtime."""
    old = path.stat()
    staged = path.with_name(".staged")
    shutil.copy(replacement, staged)
    os.utime(staged, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(staged, path)
    assert path.stat().st_mtime_ns == old.st_mtime_ns


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real: Callable[[Path], elf.ElfInfo] = elf.read_elf

    def read_elf(path: Path) -> elf.ElfInfo:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(elf, "read_elf", read_elf)
    return reads


def test_library_search_reads_each_unchanged_elf_file_once_across_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysroot = _tree_with(tmp_path / "root", TRUE)
    reads = _counting_reads(monkeypatch)
    cache = ScanCache(tmp_path / "cache")
    assert LibrarySearch(sysroot, cache).info("/usr/bin/prog").needed == ("libc.so.6",)
    cache.save()
    fresh = Sysroot(sysroot.root)
    again = LibrarySearch(fresh, ScanCache(tmp_path / "cache")).info("/usr/bin/prog")
    assert again.needed == ("libc.so.6",)
    assert reads == [sysroot.host_path("/usr/bin/prog")]


def test_library_search_rescans_a_program_replaced_under_the_same_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysroot = _tree_with(tmp_path / "root", TRUE)
    cache = ScanCache(tmp_path / "cache")
    assert LibrarySearch(sysroot, cache).info("/usr/bin/prog").needed == ("libc.so.6",)
    cache.save()
    _swap_keeping_mtime(sysroot.host_path("/usr/bin/prog"), KMOD)
    reads = _counting_reads(monkeypatch)
    later = LibrarySearch(Sysroot(sysroot.root), ScanCache(tmp_path / "cache"))
    assert "libzstd.so.1" in later.info("/usr/bin/prog").needed
    assert len(reads) == 1


def test_a_file_that_is_not_elf_is_remembered_as_such(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/script").write_text("#!/bin/sh\n")
    cache = ScanCache(tmp_path / "cache")
    assert LibrarySearch(Sysroot(root), cache).info_if_elf("/usr/bin/script") is None
    cache.save()
    entries = json.loads((tmp_path / "cache/elf.json").read_text())["entries"]
    st = (root / "usr/bin/script").stat()
    assert entries[str(root / "usr/bin/script")] == [stamp(st), None]


def test_elf_info_survives_the_json_round_trip() -> None:
    info = elf.ElfInfo(
        64,
        "EM_X86_64",
        "/lib64/ld-linux-x86-64.so.2",
        ("libc.so.6",),
        ("$ORIGIN/../lib",),
        (),
        (elf.DlopenNote("tpm", "suggested", ("libtss2-esys.so.0", "libtss2-esys.so.1")),),
    )
    assert elf.info_from_json(json.loads(json.dumps(elf.info_to_json(info)))) == info


def test_depmod_index_is_reused_until_a_module_or_depmod_input_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kver = "6.1.0-test"
    moddir = tmp_path / "root/lib/modules" / kver
    (moddir / "kernel").mkdir(parents=True)
    (moddir / "kernel/a.ko").write_bytes(b"module a")
    (moddir / "modules.order").write_text("kernel/a.ko\n")
    runs: list[list[str]] = []

    def image_index(sysroot: Sysroot, kver: str, relpaths: list[str]) -> dict[str, bytes]:
        runs.append(relpaths)
        return {"modules.dep": f"run {len(runs)}".encode()}

    monkeypatch.setattr(kmodules, "image_index", image_index)

    def index() -> dict[str, bytes]:
        cache = ScanCache(tmp_path / "cache")
        found = kmodules.cached_image_index(
            Sysroot(tmp_path / "root"), kver, ["kernel/a.ko"], cache
        )
        cache.save()
        return found

    assert index() == {"modules.dep": b"run 1"}
    assert index() == {"modules.dep": b"run 1"}
    (moddir / "kernel/a.ko").write_bytes(b"module a, rebuilt")
    assert index() == {"modules.dep": b"run 2"}
    (moddir / "modules.order").write_text("kernel/a.ko\nkernel/b.ko\n")
    assert index() == {"modules.dep": b"run 3"}
    assert index() == {"modules.dep": b"run 3"}
    assert len(runs) == 3


def test_a_big_result_is_a_file_of_its_own_and_a_corrupt_one_is_recomputed(
    tmp_path: Path,
) -> None:
    cache = ScanCache(tmp_path)
    assert cache.lookup_file("depmod", "ab12", Counter({"modules.dep": "x"})) == {
        "modules.dep": "x"
    }
    cache.save()
    stored = tmp_path / "depmod/ab12.json"
    again = Counter("unused")
    assert ScanCache(tmp_path).lookup_file("depmod", "ab12", again) == {"modules.dep": "x"}
    assert again.calls == 0
    stored.write_bytes(stored.read_bytes()[:-3])
    recompute = Counter({"modules.dep": "y"})
    assert ScanCache(tmp_path).lookup_file("depmod", "ab12", recompute) == {"modules.dep": "y"}
    assert recompute.calls == 1


def test_only_the_most_recently_used_big_results_are_kept(tmp_path: Path) -> None:
    for number in range(MAX_FILES + 3):
        cache = ScanCache(tmp_path)
        cache.lookup_file("depmod", f"key{number}", Counter(number))
        cache.save()
        os.utime(tmp_path / f"depmod/key{number}.json", (number, number))  # in this order
    kept = sorted(p.stem for p in (tmp_path / "depmod").iterdir())
    assert kept == sorted(f"key{n}" for n in range(3, MAX_FILES + 3))
