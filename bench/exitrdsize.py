#!/usr/bin/env python3
"""What the exitrd holds, byte by byte, and what each compressor makes of it (issue 20).

    python3 bench/exitrdsize.py [--runs 3] [--system debian12|debian13 ...] [--out FILE.md]

Builds the plain exitrd uncompressed (`--exitrd-compress none`) for Debian 12 (this
host's tree and installed kernel: systemd-shutdown with libsystemd-shared) and Debian 13
(the cached trixie tree of harness/newersystemd.py, with the program of the package
systemd-standalone-shutdown of its version), then writes per system:
- every entry's share: its bytes unpacked and why it is there (the image's manifest,
  followed down to what pulled it in: the program, the holders hook's shell, ...), and
  per such group the bytes the compressed image loses without it;
- per compressor and level: the image's size, the CPU time to compress the cpio (what
  the build spends on it) and the wall time of `install-exitrd` (check, unpack, seal:
  what a kernel install spends on it), medians of --runs. Shutdown reads neither: the
  loader copies the installed tree, whatever the image's compressor.
xz with a BCJ filter: its branch converter for x86 machine code before LZMA2, as bookend
writes an x86 sysroot's exitrd with `--exitrd-compress xz`.
Default report: bench/results/DATE-exitrd-size.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import posixpath
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tools import base_env, progress, write_report
from bookend import elf
from bookend.archive import ArchiveEntry, EntryKind, write_cpio
from bookend.archive.compress import Compression, open_compressor
from bookend.archive.reader import read_image
from bookend.exitrd_store import digest_path, install_exitrd

MANIFEST = "/usr/lib/bookend/manifest.json"
# Manifest reasons that point at what pulled an entry in: followed to the root cause.
FOLLOWED = ("DT_NEEDED of", "PT_INTERP of", "link on the way to", "parent directory of")
SYSTEMS = ("debian12", "debian13")


@dataclass(frozen=True)
class Variant:
    name: str
    compression: Compression
    level: int
    bcj: bool = False  # xz only: the x86 branch converter before LZMA2

    def compress(self, raw: bytes) -> bytes:
        out = io.BytesIO()
        branch_filter = lzma.FILTER_X86 if self.bcj else None
        with open_compressor(self.compression, out, self.level, 0, branch_filter) as sink:
            sink.write(raw)
        return out.getvalue()


EXTREME = 9 | lzma.PRESET_EXTREME
# What `--exitrd-compress xz` writes for an x86 sysroot; zstd 3 is the default.
SMALLEST = Variant("xz 6 + x86 BCJ (--exitrd-compress xz)", Compression.XZ, 6, bcj=True)
VARIANTS = (
    Variant("zstd 3 (the default)", Compression.ZSTD, 3),
    Variant("zstd 9", Compression.ZSTD, 9),
    Variant("zstd 19", Compression.ZSTD, 19),
    Variant("gzip 9", Compression.GZIP, 9),
    Variant("lz4 9", Compression.LZ4, 9),
    Variant("xz 0 + x86 BCJ", Compression.XZ, 0, bcj=True),
    Variant("xz 6", Compression.XZ, 6),
    Variant("xz 9e + x86 BCJ", Compression.XZ, EXTREME, bcj=True),
    SMALLEST,
)


@dataclass(frozen=True)
class Row:
    variant: Variant
    size: int
    compress_cpu: float  # median seconds
    install_wall: float  # median seconds


def build_exitrd(system: str, work: Path) -> tuple[Path, str]:
    """The system's plain exitrd, uncompressed, and a line saying what it was built from."""
    from harness.qemu import installed_kernels

    if system == "debian12":
        kver = installed_kernels()[-1].version
        tree, extra = Path("/"), []
        what = f"this host's tree, kernel {kver}"
    else:
        from harness.newersystemd import TRIXIE, ensure_newer_system, standalone_shutdown

        newer = ensure_newer_system(TRIXIE)
        tree, kver = newer.tree, newer.kernel.version
        program = standalone_shutdown(newer)
        extra = ["--exitrd-shutdown", str(program)]
        what = f"{tree}, kernel {kver}, {program.parents[3].parent.name}"
    out = work / system / "initrd.img"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bookend", "build", "--sysroot", str(tree), "--kver", kver,
            "-o", str(out), "--exitrd-compress", "none", *extra]  # fmt: skip
    subprocess.run(argv, env=base_env(work), check=True, capture_output=True)
    return out.with_name("exitrd.img"), what


def read_entries(image: Path) -> list[ArchiveEntry]:
    kinds = {stat.S_IFDIR: EntryKind.DIRECTORY, stat.S_IFLNK: EntryKind.SYMLINK,
             stat.S_IFCHR: EntryKind.CHAR_DEVICE, stat.S_IFBLK: EntryKind.BLOCK_DEVICE,
             stat.S_IFREG: EntryKind.FILE}  # fmt: skip
    entries = []
    with image.open("rb") as raw:
        for header, body in read_image(raw, str(image)):
            if header.path.strip("./") == "":
                continue
            kind = kinds[stat.S_IFMT(header.mode)]
            data = body.read()
            device = kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE)
            entries.append(ArchiveEntry(
                "/" + header.path.lstrip("./"), kind, stat.S_IMODE(header.mode),
                data=data if kind is EntryKind.FILE else None,
                target=data.decode() if kind is EntryKind.SYMLINK else None,
                rdev=(header.rdev[0] << 8 | header.rdev[1]) if device else None,
            ))  # fmt: skip
    return entries


def cpio(entries: Sequence[ArchiveEntry]) -> bytes:
    out = io.BytesIO()
    write_cpio(entries, out, epoch=0)
    return out.getvalue()


def floor_paths(entries: Sequence[ArchiveEntry], work: Path) -> set[str]:
    """What /shutdown's program needs: itself, its DT_NEEDED closure and its loader, with
    the links on the way. The manifest gives one reason per entry (the C library may be
    there "for" the hook's shell): the floor is read from the ELF files themselves."""
    by_path = {e.path: e for e in entries}
    by_name: dict[str, str] = {}
    for entry in entries:
        if entry.kind in (EntryKind.FILE, EntryKind.SYMLINK):
            by_name.setdefault(posixpath.basename(entry.path), entry.path)
    floor: set[str] = set()
    todo = ["/shutdown"]
    while todo:
        path = todo.pop()
        while path not in floor and by_path[path].kind is EntryKind.SYMLINK:
            floor.add(path)
            path = posixpath.normpath(
                posixpath.join(posixpath.dirname(path), by_path[path].target or "")
            )
        if path in floor:
            continue
        floor.add(path)
        scratch = work / "elf"
        scratch.write_bytes(by_path[path].data or b"")
        info = elf.read_elf(scratch)
        wanted = [*info.needed, *([info.interpreter] if info.interpreter else [])]
        todo += [by_name[posixpath.basename(name)] for name in wanted]
    return floor


FLOOR = "the floor: /shutdown's program, its DT_NEEDED closure and loader"


def root_causes(entries: Sequence[ArchiveEntry], floor: set[str]) -> dict[str, str]:
    """Each entry's group: the floor (a link to it too), or the reason of the entry its
    manifest chain starts from."""
    data = next(e.data for e in entries if e.path == MANIFEST)
    assert data is not None
    why = {path: tuple(value) for path, value in json.loads(data)["entries"].items()}
    groups = {}
    for entry in entries:
        path = entry.path
        while path not in floor and why.get(path, ("", None))[0] in FOLLOWED:
            if why[path][0] == "parent directory of" or why[path][1] not in why:
                break  # a directory stays where the manifest puts it
            path = why[path][1]
        if path in floor:
            groups[entry.path] = FLOOR
            continue
        while why.get(path, ("", None))[0] in FOLLOWED and why[path][1] in why:
            path = why[path][1]
        reason = why.get(path, ("", None))[0] or f"directory {path}"
        groups[entry.path] = reason.split(" (")[0]  # without exitrd_shutdown's file name
    return groups


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def measure_variant(variant: Variant, raw: bytes, runs: int, work: Path) -> Row:
    packed = variant.compress(raw)

    def compress_cpu() -> float:
        started = time.process_time()
        variant.compress(raw)
        return time.process_time() - started

    image = work / "exitrd.img"
    image.write_bytes(packed)
    digest_path(image).write_text(f"{hashlib.sha256(packed).hexdigest()}  x\n")

    def install_wall() -> float:
        with tempfile.TemporaryDirectory(dir=work) as root:
            started = time.perf_counter()
            install_exitrd(image, Path(root), None)
            return time.perf_counter() - started

    return Row(variant, len(packed), median_of(runs, compress_cpu), median_of(runs, install_wall))


def render_shares(
    entries: Sequence[ArchiveEntry], raw: bytes, share_by: Variant, work: Path
) -> str:
    groups = root_causes(entries, floor_paths(entries, work))
    whole = len(share_by.compress(raw))
    lines = [f"| group (what pulled it in) | entries | unpacked, bytes | {share_by.name}, "
             "bytes the image loses without it |", "|---|---|---|---|"]  # fmt: skip
    for group in sorted(set(groups.values())):
        members = [e for e in entries if groups[e.path] == group]
        # Without the group's files and links (directories stay: others may need them).
        rest = [e for e in entries if groups[e.path] != group or e.kind is EntryKind.DIRECTORY]
        unpacked = sum(len(e.data or b"") for e in members)
        lost = whole - len(share_by.compress(cpio(rest)))
        lines.append(f"| {group} | {len(members)} | {unpacked:,} | {lost:,} |")
    lines += ["", "| file | bytes | group |", "|---|---|---|"]
    for entry in sorted(entries, key=lambda e: -len(e.data or b"")):
        if entry.kind is EntryKind.FILE:
            lines.append(f"| {entry.path} | {len(entry.data or b''):,} | {groups[entry.path]} |")
    return "\n".join(lines)


def render_rows(rows: Sequence[Row]) -> str:
    lines = ["| compressor | image, bytes | MB | build: compress CPU, s | install-exitrd, s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(f"| {row.variant.name} | {row.size:,} | {row.size / 1e6:.3f} | "
                     f"{row.compress_cpu:.3f} | {row.install_wall:.3f} |")  # fmt: skip
    return "\n".join(lines)


def report_system(system: str, runs: int, work: Path) -> str:
    progress(f"{system}: building its exitrd")
    image, what = build_exitrd(system, work)
    entries = read_entries(image)
    raw = cpio(entries)
    progress(f"{system}: {len(entries)} entries, {len(raw):,} bytes of cpio; compressing")
    rows = [measure_variant(v, raw, runs, work / system) for v in VARIANTS]
    share_by = SMALLEST
    return "\n\n".join([
        f"## {system}: {what}",
        f"{len(entries)} entries, {len(raw):,} bytes of cpio.",
        render_rows(rows), render_shares(entries, raw, share_by, work / system),
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--system", action="append", choices=SYSTEMS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bookend-exitrdsize-"))
    (work / "tmp").mkdir()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    sections = [report_system(s, args.runs, work) for s in args.system or SYSTEMS]
    head = (f"# The exitrd's size\n\n`python3 bench/exitrdsize.py --runs {args.runs}`, "
            f"started {started}, load average {load} (a shared 2-core host).")  # fmt: skip
    write_report("\n\n".join([head, *sections]) + "\n", args.out, "-exitrd-size", work)


if __name__ == "__main__":
    main()
