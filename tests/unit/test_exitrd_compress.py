"""exitrd_compress and exitrd_compress_level: the exitrd's own compression, whatever the
initrd's (nothing unpacks the exitrd at boot or shutdown, only install-exitrd)."""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import pytest
import zstandard

import bookend.build
from bookend.arches import X86_64
from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor
from bookend.build import staged_image
from bookend.closure import Closure, ClosureEntry
from bookend.config import Config
from bookend.config.show import show_json
from bookend.config.table import exitrd_level
from bookend.exitrd_store import seal_image
from tests.unit.conftest import load_config

# Compressible and long enough that zstd levels 3 and 19 write different bytes.
TEXT = b"".join(
    b"line %d of the exitrd's text, again and again\n" % (n % 997) for n in range(40000)
)
ENTRIES = (
    ArchiveEntry("/shutdown", EntryKind.FILE, 0o755, data=b"#!/bin/sh\n"),
    ArchiveEntry("/usr", EntryKind.DIRECTORY, 0o755),
    ArchiveEntry("/usr/text", EntryKind.FILE, 0o644, data=TEXT),
)


def closure() -> Closure:
    return Closure({e.path: ClosureEntry(e, "test", None) for e in ENTRIES})


def config(root_tree: Path, tmp_path: Path, **values: Any) -> Config:
    settings = {"sysroot": str(root_tree), "output": str(tmp_path / "initrd.img"), **values}
    return load_config(None, settings)


def written(config: Config, output: Path, exitrd: bool) -> bytes:
    with staged_image(config, closure(), output, exitrd=exitrd) as staged:
        staged.commit()
    return output.read_bytes()


def test_defaults_zstd_3_for_the_exitrd_whatever_the_initrd(
    root_tree: Path, tmp_path: Path
) -> None:
    default = config(root_tree, tmp_path)
    assert default.exitrd_compress is Compression.ZSTD and exitrd_level(default) == 3
    assert default.compress_level is None  # the initrd keeps its own default (9)
    shown = show_json(config(root_tree, tmp_path, compress="xz", compress_level=2), False)
    assert (shown["exitrd_compress"], shown["exitrd_compress_level"]) == ("zstd", 3)
    assert (shown["compress"], shown["compress_level"]) == ("xz", 2)
    chosen = config(root_tree, tmp_path, exitrd_compress="xz")
    assert exitrd_level(chosen) == 6  # another compressor: its usual default level
    assert exitrd_level(config(root_tree, tmp_path, exitrd_compress_level=19)) == 19


def test_each_image_is_written_with_its_own_compression(root_tree: Path, tmp_path: Path) -> None:
    both = config(root_tree, tmp_path, compress="xz", exitrd_compress="none")
    assert written(both, tmp_path / "i.img", exitrd=False).startswith(b"\xfd7zXZ\x00")
    exitrd = tmp_path / "e.img"
    assert written(both, exitrd, exitrd=True).startswith(b"070701")  # uncompressed cpio
    assert "/usr/text" in seal_image(exitrd).sums.decode()  # and readable as an exitrd
    # The exitrd's level is its own: zstd 3 by default, 19 when asked, the initrd's 1 apart.
    levels = {}
    for level in (None, 19):
        settings = {"compress_level": 1} | (
            {} if level is None else {"exitrd_compress_level": level}
        )
        image = written(config(root_tree, tmp_path, **settings), tmp_path / f"{level}.img", True)
        assert zstandard.ZstdDecompressor().decompressobj().decompress(image).startswith(b"0707")
        levels[level] = image
    assert len(levels[19]) < len(levels[None])


def test_the_compressor_gets_the_exitrds_level(
    root_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Compression, int | None, int, int | None]] = []
    real = open_compressor

    def recording(
        compression: Compression, out: Any, level: int | None, threads: int, branch: int | None
    ) -> Any:
        seen.append((compression, level, threads, branch))
        return real(compression, out, level, threads, branch)

    monkeypatch.setattr(bookend.build, "open_compressor", recording)
    chosen = config(root_tree, tmp_path, compress_level=7, compress_threads=2)
    written(chosen, tmp_path / "e.img", exitrd=True)
    written(chosen, tmp_path / "i.img", exitrd=False)
    # An xz exitrd of the fixture tree, whose programs are not ELF: no machine, no filter.
    written(config(root_tree, tmp_path, exitrd_compress="xz"), tmp_path / "x.img", exitrd=True)
    assert seen == [(Compression.ZSTD, 3, 2, None), (Compression.ZSTD, 7, 2, None),
                    (Compression.XZ, 6, 0, None)]  # fmt: skip


def test_an_xz_exitrd_gets_the_branch_filter_of_the_sysroots_machine(
    root_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookend.build, "sysroot_arch", lambda sysroot: X86_64)
    exitrd = tmp_path / "e.img"
    xz = config(root_tree, tmp_path, compress="xz", exitrd_compress="xz")
    image = written(xz, exitrd, exitrd=True)
    # The xz block header (after the 12-byte stream header): its flags' two low bits
    # are the number of filters less one, and the first filter's ID is x86's.
    assert (image[13] & 0x03, image[14]) == (1, lzma.FILTER_X86)
    assert lzma.decompress(image).startswith(b"070701")
    assert "/usr/text" in seal_image(exitrd).sums.decode()  # install-exitrd reads it
    # The initrd, which the kernel unpacks, never gets one; nor an exitrd in zstd.
    assert written(xz, tmp_path / "i.img", exitrd=False)[13] & 0x03 == 0
    assert bookend.build.exitrd_branch_filter(config(root_tree, tmp_path)) is None
