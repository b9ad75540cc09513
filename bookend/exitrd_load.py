"""Bring the exitrd into RAM for shutdown: check its digest, unpack it to /run/initramfs.

Run by bookend-exitrd.service on the running system. The image is unpacked into a
fresh temporary directory beside the target (mode 0700, on the same /run tmpfs) and
renamed into place only when complete. On any failure nothing is left behind and
/run/initramfs/shutdown does not exist, so systemd powers off the normal way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from bookend.errors import ArchiveError

TARGET = Path("/run/initramfs")
DIGEST_SUFFIX = ".sha256"


def digest_path(image: Path) -> Path:
    """Where the image's SHA-256 is recorded: beside it, as sha256sum prints it."""
    return image.with_name(image.name + DIGEST_SUFFIX)


def check_digest(image: Path) -> bytes:
    """The image's bytes, if their SHA-256 is the one recorded beside it."""
    recorded_in = digest_path(image)
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
    """Unpack the checked image to target; the number of entries unpacked."""
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
        # Unpack exactly the bytes whose digest was checked, not the file read again.
        checked = staging / ".checked-image"
        checked.write_bytes(data)
        tree = staging / "root"
        # Imported here: `bookend build` imports this module for digest_path only.
        from bookend.inspect.extract import extract_image

        report = extract_image(checked, tree, devices=True, owners=True)
        if not report.ok:
            refused = "; ".join(f"{name}: {why}" for name, why in report.refused)
            raise ArchiveError(f"exitrd {image}: entries refused: {refused}")
        if not os.access(tree / "shutdown", os.X_OK):
            raise ArchiveError(f"exitrd {image}: has no executable /shutdown")
        tree.chmod(0o700)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tree, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report.extracted


def _remove_shutdown(target: Path) -> None:
    if os.path.lexists(target / "shutdown"):
        os.unlink(target / "shutdown")
