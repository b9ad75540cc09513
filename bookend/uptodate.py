"""Whether the images at the outputs already are what this build would write.

A build's inputs are bookend's version, the compressor's, the settings, the
SOURCE_DATE_EPOCH clamp, and every entry of both closures: its path, type, mode,
mtime, link target and device number, the digest of what bookend generated (which
covers what hostonly detection found), and for a file copied from the sysroot its
stamp: size, mtime_ns, ctime_ns, inode and device, which change whenever its content
can have. The closures are computed anyway (with the scan cache that is cheap), so a
file that appeared or vanished in the sysroot and changes what is pulled in changes
the inputs too.

Their digest is recorded with the SHA-256 and mode of every file the build wrote, in
the scan cache's directory under the initrd's path (not beside it: /boot holds
images, and whatever reads it expects nothing else there). A build is skipped only
when the digest is the same and every one of those files still has its recorded
SHA-256 and mode: never a stale, damaged or hand-edited image. Without a cache
directory nothing is skipped.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from bookend import __version__
from bookend.archive import ArchiveEntry, Compression, source_date_epoch, write_atomically
from bookend.closure import Closure
from bookend.config import SETTINGS, Config
from bookend.errors import BookendError
from bookend.scancache import stamp

log = logging.getLogger(__name__)

FORMAT = 1
RECORDS = "outputs"  # the directory of records, in the cache directory


def record_path(cache_directory: Path, output: Path) -> Path:
    """Where the record of the build that wrote output is kept."""
    key = hashlib.sha256(os.fsencode(output.absolute())).hexdigest()[:32]
    return cache_directory / RECORDS / f"{key}.json"


def inputs_digest(config: Config, closures: Iterable[Closure]) -> str:
    """The SHA-256 of everything the images written for config and closures depend on."""
    digest = hashlib.sha256()
    header = {
        "format": FORMAT,
        "bookend": __version__,
        "python": sys.version,
        "compressor": _compressor_version(config.compress),
        "exitrd_compressor": _compressor_version(config.exitrd_compress),
        "epoch": source_date_epoch(os.environ),
        "settings": _settings(config),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for closure in closures:
        for entry in [*closure.early, None, *(item.entry for item in closure.entries.values())]:
            line = "--- segment" if entry is None else json.dumps(_entry_inputs(entry))
            digest.update(line.encode() + b"\n")
        digest.update(b"--- image\n")
    return digest.hexdigest()


def is_up_to_date(cache_directory: Path | None, outputs: list[Path], inputs: str) -> bool:
    """Whether outputs were all written by a build with these inputs, and are unchanged."""
    if cache_directory is None:
        return False
    try:
        record = json.loads(record_path(cache_directory, outputs[0]).read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return False
    files = record.get("files")
    if record.get("inputs") != inputs or not isinstance(files, dict):
        return False
    if sorted(files) != sorted(str(path.absolute()) for path in outputs):
        return False
    return all(_identity(Path(path)) == recorded for path, recorded in files.items())


def record_inputs(cache_directory: Path | None, outputs: list[Path], inputs: str) -> None:
    """Record inputs and the outputs' digests; a failure only costs the next skip."""
    if cache_directory is None:
        return
    files = {str(path.absolute()): _identity(path) for path in outputs}
    text = json.dumps({"format": FORMAT, "inputs": inputs, "files": files}, indent=1)
    record = record_path(cache_directory, outputs[0])

    def write(out: BinaryIO) -> None:
        out.write(text.encode() + b"\n")

    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(record, write)
    except (BookendError, OSError) as exc:  # the images themselves are written and fine
        log.warning("%s: not written (%s); the next build cannot skip", record, exc)


def _settings(config: Config) -> dict[str, Any]:
    """The settings that decide what is written (not force or rebuild), and where each
    item of a list came from (the manifest's reasons name it)."""
    settings = {s.key: _plain(getattr(config, s.key)) for s in SETTINGS if s.image_input}
    return {**settings, "item_origins": _plain(config.item_origins)}


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _compressor_version(compression: Compression) -> str:
    """The version of the library that compresses: another may compress differently."""
    if compression is Compression.ZSTD:
        import zstandard

        return f"zstandard {zstandard.__version__} zstd {zstandard.ZSTD_VERSION}"
    if compression is Compression.LZ4:
        import lz4

        version: str = lz4.library_version_string()
        return f"lz4 {version}"
    if compression is Compression.GZIP:
        import zlib

        return f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    # xz (Python's own liblzma) and none: the Python version says it.
    return str(compression.value)


def _entry_inputs(entry: ArchiveEntry) -> list[object]:
    source: list[int] | str | None = None
    if entry.source is not None:
        try:
            source = stamp(os.stat(entry.source))
        except OSError as exc:
            source = f"unreadable: {exc.strerror}"  # the build will say what is wrong
    data = None if entry.data is None else hashlib.sha256(entry.data).hexdigest()
    return [
        entry.path,
        entry.kind.value,
        entry.mode,
        entry.mtime,
        entry.target,
        entry.rdev,
        None if entry.source is None else str(entry.source),
        source,
        data,
    ]


def _identity(path: Path) -> list[object]:
    """An output's SHA-256 and mode (a key file's initrd must stay 0600); [] if unreadable."""
    try:
        with path.open("rb") as stream:
            mode = stat.S_IMODE(os.fstat(stream.fileno()).st_mode)
            return [hashlib.file_digest(stream, "sha256").hexdigest(), mode]
    except OSError:
        return []
