"""Bring the exitrd into RAM for shutdown: check its digest, unpack it to /run/initramfs.

Run by bookend-exitrd.service on the running system. The image is unpacked into a
fresh temporary directory beside the target (mode 0700, on the same /run tmpfs) and
renamed into place only when complete. On any failure nothing is left behind and
/run/initramfs/shutdown does not exist, so systemd powers off the normal way.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from bookend.archive.reader import Member, decompressed, read_members
from bookend.errors import ArchiveError

TARGET = Path("/run/initramfs")
DIGEST_SUFFIX = ".sha256"


def check_digest(image: Path) -> bytes:
    """The image's bytes, if their SHA-256 is the one recorded beside it."""
    recorded_in = image.with_name(image.name + DIGEST_SUFFIX)
    try:
        recorded = recorded_in.read_text().split()[0].lower()
        data = image.read_bytes()
    except (OSError, IndexError) as exc:
        detail = getattr(exc, "strerror", None) or "empty digest file"
        raise ArchiveError(f"exitrd {image}: cannot read it or its digest: {detail}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise ArchiveError(
            f"exitrd {image}: SHA-256 {actual} does not match {recorded_in} ({recorded}): "
            "refusing it; shutdown goes on without an exitrd"
        )
    return data


def load_exitrd(image: Path, target: Path = TARGET) -> int:
    """Unpack the checked image to target; the number of members unpacked."""
    try:
        return _load(image, target)
    except OSError as exc:
        where = exc.filename or image
        raise ArchiveError(f"exitrd {image}: {where}: {exc.strerror}") from None


def _load(image: Path, target: Path) -> int:
    _remove_shutdown(target)  # whatever was there must not be used half-replaced
    data = check_digest(image)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        stream = decompressed(io.BufferedReader(io.BytesIO(data)), str(image))
        count = sum(1 for member in read_members(stream, str(image)) if _unpack(staging, member))
        if not os.access(staging / "shutdown", os.X_OK):
            raise ArchiveError(f"exitrd {image}: has no executable /shutdown")
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count


def _remove_shutdown(target: Path) -> None:
    if os.path.lexists(target / "shutdown"):
        os.unlink(target / "shutdown")


def _unpack(root: Path, member: Member) -> bool:
    relative = PurePosixPath(member.path)
    if relative.is_absolute() or ".." in relative.parts or member.path in ("", "."):
        raise ArchiveError(f"exitrd member {member.path!r}: not a path inside the image")
    path = root / relative
    kind = stat.S_IFMT(member.mode)
    permissions = stat.S_IMODE(member.mode)
    if kind == stat.S_IFDIR:
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(permissions)
    elif kind == stat.S_IFREG:
        path.write_bytes(member.data)
        path.chmod(permissions)
    elif kind == stat.S_IFLNK:
        os.symlink(member.data.decode("utf-8", "surrogateescape"), path)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(path, kind | permissions, os.makedev(*member.rdev))
    else:
        raise ArchiveError(f"exitrd member {member.path!r}: unsupported type {kind:o}")
    return True
