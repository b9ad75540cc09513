"""What reading the sysroot's files found, kept between builds so a rebuild reads less.

A build reads the same files again and again: the ELF headers of every program,
library and library candidate, the .modinfo of every kernel module for its firmware,
and depmod's index of the chosen modules. Each result is stored under the file's
path with its stamp: size, mtime_ns, ctime_ns, inode and device, which together change
whenever the content can have changed (ctime even when a tool restores mtime). A
result whose stamp differs is never used: the file is read again and the entry
replaced.

The cache lives in $BOOKEND_CACHE_DIR, else $XDG_CACHE_HOME/bookend, else
/var/cache/bookend for root and ~/.cache/bookend for others. Each table is one JSON
file, written atomically and only when it changed; an unreadable, corrupt or
foreign-version table is treated as empty, so the worst a broken cache can do is cost
a full scan. Within one build the object also shares results between the plan and
both closures (the module database, above all), even with no directory to save to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bookend import __version__

log = logging.getLogger(__name__)

# Bumped whenever a table's layout or the meaning of a result changes.
FORMAT = 1
# A table that grew past this many entries keeps only those the last build used, so
# files long gone from the sysroot do not pile up.
MAX_ENTRIES = 20_000
# Big results (a depmod index is up to 2 MB) are one file each, read only when wanted;
# a directory of them keeps the most recently used.
MAX_FILES = 16

Stamp = list[int]  # size, mtime_ns, ctime_ns, inode, device


def stamp(st: os.stat_result) -> Stamp:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def default_directory(environ: Mapping[str, str]) -> Path | None:
    """Where the cache lives; None when BOOKEND_CACHE_DIR is set but empty (no cache)."""
    if "BOOKEND_CACHE_DIR" in environ:
        chosen = environ["BOOKEND_CACHE_DIR"]
        return Path(chosen) if chosen else None
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "bookend"
    if os.geteuid() == 0:
        return Path("/var/cache/bookend")
    return Path.home() / ".cache" / "bookend"


class ScanCache:
    """Tables of results keyed by a name (usually a host path) and the file's stamp."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._tables: dict[str, dict[str, list[Any]]] = {}
        self._used: dict[str, set[str]] = {}
        self._changed: set[str] = set()
        self._new_files: dict[Path, bytes] = {}
        self.memory: dict[object, object] = {}  # results shared within this build only

    def lookup(self, table: str, name: str, key: Stamp | str, compute: Callable[[], Any]) -> Any:
        """The stored result for (name, key), or compute()'s, stored for next time.

        compute must return JSON data (lists, not tuples, round-trip as lists).
        """
        entries = self._table(table)
        self._used[table].add(name)
        stored = entries.get(name)
        if stored is not None and stored[0] == key:
            return stored[1]
        value = compute()
        entries[name] = [key, value]
        self._changed.add(table)
        return value

    def lookup_file(self, kind: str, digest: str, compute: Callable[[], Any]) -> Any:
        """The result stored for digest (a hash of all its inputs), or compute()'s.

        For results too big to load with every build: each is a file of its own.
        """
        if ("file", kind, digest) in self.memory:
            return self.memory[("file", kind, digest)]
        path = None if self.directory is None else self.directory / kind / f"{digest}.json"
        value = _read_file(path) if path else None
        if value is None:
            value = {"format": FORMAT, "bookend": __version__, "value": compute()}
            if path:
                self._new_files[path] = json.dumps(value, separators=(",", ":")).encode()
        elif path:
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: kept when the directory is pruned
        self.memory[("file", kind, digest)] = value
        return value["value"]

    def save(self) -> None:
        """Write back what changed; a cache that cannot be written is skipped."""
        if self.directory is None:
            return
        for table in sorted(self._changed):
            entries = self._tables[table]
            if len(entries) > MAX_ENTRIES:
                entries = {k: v for k, v in entries.items() if k in self._used[table]}
            document = {"format": FORMAT, "bookend": __version__, "entries": entries}
            self._save(self._path(table), json.dumps(document, separators=(",", ":")).encode())
        for path, data in self._new_files.items():
            self._save(path, data)
            _prune(path.parent, keep=MAX_FILES)
        self._changed.clear()
        self._new_files.clear()

    def _save(self, path: Path, data: bytes) -> None:
        try:
            _write(path, data)
        except OSError as exc:
            log.info("scan cache %s not saved: %s", path, exc.strerror)

    def _table(self, table: str) -> dict[str, list[Any]]:
        if table not in self._tables:
            self._tables[table] = self._read(table)
            self._used[table] = set()
        return self._tables[table]

    def _path(self, table: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{table}.json"

    def _read(self, table: str) -> dict[str, list[Any]]:
        if self.directory is None:
            return {}
        try:
            document = json.loads(self._path(table).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.info("scan cache %s ignored: %s", self._path(table), exc)
            return {}
        if not _well_formed(document):
            log.info("scan cache %s ignored: another format or bookend version", table)
            return {}
        entries: dict[str, list[Any]] = document["entries"]
        return entries


def _write(path: Path, data: bytes) -> None:
    """path holds data or what it held before, never part of it (another build may read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _read_file(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # missing, unreadable or corrupt: computed again
    if not isinstance(document, dict) or "value" not in document:
        return None
    if document.get("format") != FORMAT or document.get("bookend") != __version__:
        return None
    return document


def _prune(directory: Path, keep: int) -> None:
    """Remove all but the keep most recently used files of directory."""
    try:
        files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink()
    except OSError:
        pass  # another build pruned too; the next prune finishes the job


def _well_formed(document: object) -> bool:
    """The same format and bookend version, and every entry a [key, value] pair."""
    if not isinstance(document, dict):
        return False
    if document.get("format") != FORMAT or document.get("bookend") != __version__:
        return False
    entries = document.get("entries")
    return isinstance(entries, dict) and all(
        isinstance(v, list) and len(v) == 2 for v in entries.values()
    )
