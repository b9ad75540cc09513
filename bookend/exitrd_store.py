"""The exitrd as the running system keeps it: a tree under /usr, named by its digest.

`bookend install-exitrd` unpacks a built exitrd into STORE/<digest>/tree and writes
STORE/<digest>/sums beside it, and STORE/<digest>/paths: every path of the listing
below, in its order, so the loader need not sort (what it names is checked all the
same: stat of those paths must give the listing the sums name, and the copy must hold
as many entries as the listing). The digest is the SHA-256 of sums, and sums is a
sha256sum(1) listing: one line per regular file ("<sha256>  ./path") and one line for
standard input ("<sha256>  -"), the SHA-256 of the tree's listing as

    du -al . | cut -f2- | LC_ALL=C sort | LC_ALL=C QUOTING_STYLE=literal stat -c '%f %N'

prints it (raw mode in hex, the path, a symlink's target): every path, its type and
permission bits, no more and no fewer. So the loader (bookend/data/load-exitrd.sh, a
shell script using coreutils and systemd-tmpfiles only) checks a copy of the whole tree
with one sha256sum run, and the digest names everything the exitrd holds.

The build computes the same digest from the exitrd's closure, its entries and their
sources (seal_entries), before either image is written, and puts it in the initrd's
closure (bookend.closure.with_exitrd), so `bookend plan --closure` shows it; the image
written is checked to have it (seal_image). The initrd leaves it in RUN_DIGEST, which
survives the switch to the real root, and the loader takes only the exitrd that digest
names. Several exitrds may be installed at once (one per initrd that names them): INDEX
says which initrd names which digest, and an install removes the exitrds no listed
initrd names any more. DEFAULT names the latest install's exitrd: the loader's fallback
when the initrd that booted named none (it was built without an exitrd, or by something
else).

The build writes the image's SHA-256 beside it (digest_path); install-exitrd takes only
an image that matches it, so a damaged or half-written copy is never installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO

from bookend.archive import ArchiveEntry, EntryKind, write_atomically
from bookend.errors import ArchiveError, ConfigError

STORE = "usr/lib/bookend/exitrd"  # under the root
LOADER = "usr/lib/bookend/load-exitrd"
INDEX = "index"  # in STORE: "<digest>  <initrd path>" per line
DEFAULT = "default"  # in STORE: the digest of the latest install
RUN_DIGEST = "/run/bookend/exitrd.sha256"  # left by the initrd that booted
ROOT_MODE = 0o700  # of /run/initramfs, as the loader leaves it
DIGEST_SUFFIX = ".sha256"  # of the image's digest file, beside it
_DEVICES = ("chardev", "blockdev")  # e.g. /dev/console, for the kernel: not kept
_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK}


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
            "refusing to install it"
        )
    return data


@dataclass(frozen=True)
class Sealed:
    """What the digest covers: the tree's listing and the sums that name it."""

    listing: bytes
    sums: bytes
    paths: bytes = b""  # the listing's paths, one a line, in its order

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.sums).hexdigest()


def seal(entries: Mapping[str, tuple[int, str | None]], contents: Mapping[str, str]) -> Sealed:
    """entries: relative path ("." the root) -> (st_mode, symlink target); contents:
    relative path of each regular file -> the SHA-256 of its bytes."""
    lines, shown_paths = [], []
    for path in sorted({".", *entries}, key=_sort_key):
        mode, target = entries.get(path, (stat.S_IFDIR | ROOT_MODE, None))
        if path == ".":
            mode = stat.S_IFDIR | ROOT_MODE
        shown = "." if path == "." else f"./{path}"
        shown_paths.append(shown)
        lines.append(f"{mode:x} {shown}" + (f" -> {target}" if target is not None else ""))
    listing = "".join(line + "\n" for line in lines).encode()
    sums = [f"{hashlib.sha256(listing).hexdigest()}  -"]
    sums += [f"{contents[path]}  ./{path}" for path in sorted(contents, key=_sort_key)]
    paths = "".join(shown + "\n" for shown in shown_paths).encode()
    return Sealed(listing, "".join(line + "\n" for line in sums).encode(), paths)


def _sort_key(path: str) -> bytes:
    # What `LC_ALL=C sort` does with du's "./path" lines: byte order.
    return b"." if path == "." else f"./{path}".encode()


def _checked_name(path: str, where: object) -> str:
    if any(c in path for c in "\n\\") or path.startswith("..") or "/../" in path:
        raise ArchiveError(f"exitrd {where}: {path!r}: a name the shell loader cannot check")
    return path


# A member of an image as the seal sees it: its kind ("file", "dir", "link", as
# bookend.inspect.image names kinds), permission bits, symlink target, and a file's SHA-256.
Member = tuple[str, int, str | None, str | None]


def seal_image(image: Path) -> Sealed:
    """The seal of a bookend exitrd image, from its entries as the kernel would see them."""
    from bookend.inspect.image import scan_image

    final = scan_image(image, digests=True).final()
    members: dict[str, Member] = {}
    for path, entry in final.items():
        digest = entry.digest
        if entry.kind == "file" and digest is None and entry.hardlink is not None:
            digest = final[entry.hardlink].digest
        members[path] = (entry.kind, entry.mode, entry.target, digest)
    return _seal_members(members, image)


def seal_entries(entries: Iterable[ArchiveEntry], where: object) -> Sealed:
    """The seal of the image these entries make (bookend.archive.write_cpio writes them
    in one archive, its root left out), without writing it: what seal_image of that
    image gives. Files are read from their sources; where names the image in errors."""
    from bookend.inspect.image import clean_path

    members: dict[str, Member] = {}
    for entry in entries:
        path = clean_path(entry.path)
        if path == ".":
            continue  # write_cpio leaves the root out: it is the kernel's rootfs
        digest = _content_digest(entry) if entry.kind is EntryKind.FILE else None
        members[path] = (entry.kind.value, entry.mode & 0o7777, entry.target, digest)
    return _seal_members(members, where)


def _content_digest(entry: ArchiveEntry) -> str:
    if entry.data is not None:
        return hashlib.sha256(entry.data).hexdigest()
    if entry.source is None:
        raise ArchiveError(f"{entry.path}: file entry without a source or data")
    digest = hashlib.sha256()
    try:
        with entry.source.open("rb") as source:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise ArchiveError(f"{entry.source}: cannot read: {error.strerror}") from None
    return digest.hexdigest()


def _seal_members(members: Mapping[str, Member], where: object) -> Sealed:
    """The seal of an image's final members, by relative path."""
    entries: dict[str, tuple[int, str | None]] = {}
    contents: dict[str, str] = {}
    for path, (kind, mode, target, digest) in members.items():
        _checked_name(path, where)
        if kind in _DEVICES:
            continue  # hidden: the running system's /dev is moved over the exitrd's
        if kind not in _TYPES:
            raise ArchiveError(f"exitrd {where}: {path}: a {kind} (not kept in the tree)")
        if kind == "link":
            entries[path] = (stat.S_IFLNK | 0o777, target)
            continue
        entries[path] = (_TYPES[kind] | mode, None)
        if kind == "file":
            assert digest is not None
            contents[path] = digest
    for path in list(entries):  # directories the kernel would make for a deeper entry
        parent = os.path.dirname(path)
        while parent and parent not in entries:
            entries[parent] = (stat.S_IFDIR | 0o755, None)
            parent = os.path.dirname(parent)
    return seal(entries, contents)


def seal_tree(tree: Path) -> Sealed:
    """The seal of a tree on disk, as the shell loader computes it of its copy."""
    entries: dict[str, tuple[int, str | None]] = {}
    contents: dict[str, str] = {}
    for directory, dirs, names in os.walk(tree):
        for name in dirs + names:
            full = Path(directory, name)
            path = _checked_name(str(full.relative_to(tree)), tree)
            st = full.lstat()
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            entries[path] = (st.st_mode, link)
            if stat.S_ISREG(st.st_mode):
                contents[path] = hashlib.sha256(full.read_bytes()).hexdigest()
    return seal(entries, contents)


def read_index(store: Path) -> dict[str, str]:
    """initrd path -> the digest of the exitrd it names."""
    index: dict[str, str] = {}
    try:
        text = (store / INDEX).read_text()
    except FileNotFoundError:
        return index
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, initrd = line.partition("  ")
        if not sep or not _is_digest(digest) or not initrd.startswith("/"):
            raise ConfigError(f"{store / INDEX}:{number}: not '<sha256>  /path/of/initrd'")
        index[initrd] = digest
    return index


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Installed:
    digest: str
    store: Path
    removed: tuple[str, ...]  # digests of exitrds no installed initrd names any more
    unpacked: bool  # False: that exitrd was installed already


def install_exitrd(image: Path, root: Path, initrd: str | None) -> Installed:
    """Keep image under root as a tree named by its digest, note which initrd names it,
    remove what no installed initrd names (nor, installing into /, the initrd that
    booted), install the loader script."""
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory")
    if initrd is not None and not initrd.startswith("/"):
        raise ConfigError(f"--initrd {initrd}: must be an absolute path (as the root sees it)")
    check_digest(image)  # the build's digest beside it: a damaged copy goes no further
    sealed = seal_image(image)
    store = root / STORE
    store.mkdir(parents=True, exist_ok=True)
    unpacked = _unpack(image, store, sealed)
    index = {path: d for path, d in read_index(store).items() if _exists(root, path)}
    if initrd is not None:
        index[initrd] = sealed.digest
    _write(store / INDEX, "".join(f"{d}  {path}\n" for path, d in sorted(index.items())))
    _write(store / DEFAULT, sealed.digest + "\n")
    keep = {*index.values(), sealed.digest, *_booted(root)}
    removed = []
    for entry in sorted(store.iterdir()):
        if _is_digest(entry.name) and entry.name not in keep:
            shutil.rmtree(entry)
            removed.append(entry.name)
    loader = files("bookend").joinpath("data/load-exitrd.sh").read_text()
    _write(root / LOADER, loader, 0o755)
    return Installed(sealed.digest, store, tuple(removed), unpacked)


def _booted(root: Path) -> list[str]:
    """On the running system, the digest its initrd named: never removed under it."""
    if root.resolve() != Path("/"):
        return []
    try:
        digest = Path(RUN_DIGEST).read_text().strip()
    except OSError:
        return []
    return [digest] if _is_digest(digest) else []


def _exists(root: Path, path: str) -> bool:
    return os.path.lexists(root / path.lstrip("/"))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    data = text.encode()

    def write(out: BinaryIO) -> None:
        out.write(data)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write, mode)


def _unpack(image: Path, store: Path, sealed: Sealed) -> bool:
    """STORE/<digest>/{tree,sums,paths}, made beside and renamed into place when checked."""
    from bookend.inspect.extract import extract_image

    final = store / sealed.digest
    sums = final / "sums"
    paths = final / "paths"
    if _holds(sums, sealed.sums) and _holds(paths, sealed.paths):
        if seal_tree(final / "tree").sums == sealed.sums:
            return False
        shutil.rmtree(final)  # damaged: unpack it again
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=store))
    try:
        tree = staging / "tree"
        tree.mkdir()
        report = extract_image(image, tree, devices=False)
        if not report.ok:
            refused = "; ".join(f"{name}: {why}" for name, why in report.refused)
            raise ArchiveError(f"exitrd {image}: entries refused: {refused}")
        tree.chmod(ROOT_MODE)
        if seal_tree(tree).sums != sealed.sums:
            raise ArchiveError(f"exitrd {image}: unpacked, it differs from its entries")
        (staging / "sums").write_bytes(sealed.sums)
        (staging / "paths").write_bytes(sealed.paths)
        staging.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _holds(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


DIGEST_UNIT = "bookend-exitrd-digest.service"
CARRIED = "/usr/lib/bookend/exitrd-tree"  # in the initrd: the exitrd's tree (exitrd_in_initrd)
DIGEST_CONF = "/usr/lib/bookend/exitrd-digest.conf"
_UNIT_DIR = "/usr/lib/systemd/system"
_DIGEST_UNIT_TEXT = f"""\
# Written by bookend build: leaves the SHA-256 of the exitrd built with this initrd in
# /run, which the switch to the real root keeps, for the exitrd loader at shutdown.
[Unit]
Description=Leave the exitrd's digest in /run for shutdown
DefaultDependencies=no
Before=sysinit.target initrd-switch-root.target
ConditionPathExists=/etc/initrd-release

[Service]
Type=oneshot
ExecStart=@TMPFILES@ --create {DIGEST_CONF}
"""


def initrd_entries(
    digest: str, tmpfiles: str, carried: bool = False
) -> list[tuple[str, bytes | None, str | None]]:
    """What the initrd gets for the exitrd of digest: (path, file bytes, symlink target),
    directories (neither) first; tmpfiles: systemd-tmpfiles in the initrd. Only
    DIGEST_CONF differs from one exitrd to another. carried: the initrd holds the exitrd's
    tree at CARRIED (exitrd_in_initrd), and the same run of tmpfiles copies it to
    /run/initramfs (`C`: a recursive copy keeping modes and symlinks), which the switch
    to the root keeps: the root's systemd-shutdown pivots into it."""
    unit = _DIGEST_UNIT_TEXT.replace("@TMPFILES@", tmpfiles)
    conf = f"f {RUN_DIGEST} 0444 - - - {digest}\n".encode()
    if carried:
        conf += f"C /run/initramfs - - - - {CARRIED}\n".encode()
    wants = f"{_UNIT_DIR}/sysinit.target.wants"
    return [
        ("/usr/lib/bookend", None, None),
        (wants, None, None),
        (DIGEST_CONF, conf, None),
        (f"{_UNIT_DIR}/{DIGEST_UNIT}", unit.encode(), None),
        (f"{wants}/{DIGEST_UNIT}", None, f"../{DIGEST_UNIT}"),
    ]


def named_digest(conf: bytes) -> str | None:
    """The digest a DIGEST_CONF (initrd_entries wrote it) leaves in RUN_DIGEST."""
    fields = conf.partition(b"\n")[0].decode(errors="replace").split()
    if fields[:2] != ["f", RUN_DIGEST] or not _is_digest(fields[-1]):
        return None
    return fields[-1]
