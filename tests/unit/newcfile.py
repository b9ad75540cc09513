"""A small newc crafter for the test_inspect_* modules: archives no honest tool would write
(wrong sizes, bad magic, missing NULs), member by member."""

from __future__ import annotations

S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR = 0o100000, 0o040000, 0o120000, 0o020000


def newc(
    name: bytes | str,
    mode: int = S_IFREG | 0o644,
    data: bytes = b"",
    *,
    ino: int = 1,
    nlink: int = 1,
    rdev: tuple[int, int] = (0, 0),
    namesize: int | None = None,
    filesize: int | None = None,
    magic: bytes = b"070701",
    check: int = 0,
    nul: bool = True,
) -> bytes:
    """One newc member, padded; the keyword arguments let a test lie in the header."""
    raw_name = name.encode() if isinstance(name, str) else name
    encoded = raw_name + (b"\0" if nul else b"")
    fields = (ino, mode, 0, 0, nlink, 0, len(data) if filesize is None else filesize, 0, 0,
              *rdev, len(encoded) if namesize is None else namesize, check)  # fmt: skip
    header = magic + b"".join(b"%08X" % value for value in fields) + encoded
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


def trailer() -> bytes:
    return newc("TRAILER!!!", 0, ino=0)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + trailer()
