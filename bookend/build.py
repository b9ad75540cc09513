"""The build, top to bottom: config -> plan -> closure -> archive, for both images."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bookend import uptodate
from bookend.archive import (
    Compression,
    open_compressor,
    source_date_epoch,
    write_atomically,
    write_cpio,
)
from bookend.archive.atomic import Staged, staged_file
from bookend.archive.lock import locked_outputs
from bookend.closure import Closure, build_closure, with_exitrd
from bookend.config import Config
from bookend.config.table import exitrd_level
from bookend.errors import ArchiveError
from bookend.exitrd_store import DIGEST_CONF, digest_path, named_digest, seal_image
from bookend.features import ALL
from bookend.features.base import Feature
from bookend.hostonly import format_detection
from bookend.manifest import with_manifest
from bookend.plan import Plan, make_plan
from bookend.scancache import ScanCache, default_directory
from bookend.signing import KEY_SETTINGS
from bookend.uki import UkiTools, find_uki_tools, staged_uki

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    path: Path
    plan: Plan
    closure: Closure
    size: int  # bytes of the compressed image


@dataclass(frozen=True)
class BuildResult:
    initrd: ImageResult
    exitrd: ImageResult | None
    up_to_date: bool = False  # nothing written: the images were built from the same inputs


def write_image(config: Config, closure: Closure, output: Path | None = None) -> None:
    with staged_image(config, closure, output) as staged:
        staged.commit()


@contextmanager
def staged_image(
    config: Config, closure: Closure, output: Path | None = None, *, exitrd: bool = False
) -> Iterator[Staged]:
    """The complete (and, for the initrd, checked) image beside its target, not yet renamed;
    exitrd: the exitrd, with its own compression."""
    epoch = source_date_epoch(os.environ)
    # Nothing unpacks the exitrd at boot or at shutdown, only install-exitrd, once.
    compression = config.exitrd_compress if exitrd else config.compress
    level = exitrd_level(config) if exitrd else config.compress_level

    def write(out: BinaryIO) -> None:
        if closure.early:
            # The kernel finds early microcode only in an uncompressed archive at the start.
            write_cpio(list(closure.early), out, epoch=0)
        with open_compressor(compression, out, level, config.compress_threads) as stream:
            write_cpio(closure.archive_entries(), stream, epoch=epoch)

    target = output or config.output
    # An image holding host secrets (key files, named on purpose) is as secret as they are.
    secrets = closure.secrets()
    if secrets:
        log.warning("%s holds secrets (%s): written with mode 0600", target, ", ".join(secrets))
    # Only the initrd is checked: it is what stops a boot, and what the user replaces.
    verify = _check_before_replacing(config, target) if output is None else None
    size_hint = _expected_size(compression, target, closure)
    mode = 0o600 if secrets else 0o644
    with staged_file(target, write, mode, verify, size_hint) as staged:
        yield staged


def _expected_size(compression: Compression, target: Path, closure: Closure) -> int:
    """For the full-disk message: uncompressed, the content; else the image it replaces
    (same settings, about the same size), or the content as an upper bound."""
    if compression is not Compression.NONE and target.is_file():
        return target.stat().st_size
    total = 0
    for entry in [*closure.early, *closure.archive_entries()]:
        if entry.data is not None:
            total += len(entry.data)
        elif entry.source is not None and entry.source.is_file():
            total += entry.source.stat().st_size
    return total


def _check_before_replacing(config: Config, target: Path) -> Callable[[Path], None]:
    """`bookend check` on the new initrd: one that fails it does not replace the old one."""

    def verify(new: Path) -> None:
        from bookend.inspect.check import check_image

        problems = check_image(new).problems
        if not problems:
            return
        listing = "\n".join(f"  {problem}" for problem in problems)
        if target.exists() and not config.force:
            raise ArchiveError(
                f"{target}: not replaced, the new initrd fails its check "
                f"(--force replaces it anyway):\n{listing}"
            )
        log.warning("%s fails its check:\n%s", target, listing)

    return verify


def write_digest(image: Path) -> str:
    """Record the image's SHA-256 beside it, as sha256sum prints it, for the loader."""
    digest = hashlib.sha256()
    with image.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    line = f"{digest.hexdigest()}  {image.name}\n".encode()

    def write(out: BinaryIO) -> None:
        out.write(line)

    write_atomically(digest_path(image), write)
    return digest.hexdigest()


def scan_cache() -> ScanCache:
    """The cache a build reads and saves; give it to resolve too, which fills it first."""
    return ScanCache(default_directory(os.environ))


def build_initrd(
    config: Config, cache: ScanCache | None = None, registry: Mapping[str, Feature] = ALL
) -> BuildResult:
    """Both images of config; registry: the features by name (bookend.features.datafiles)."""
    # Before anything is built: a UKI the sysroot cannot make is known at once.
    uki_tools = (
        find_uki_tools(config.sysroot, config.kver, signing_keys(config)) if config.uki else None
    )
    outputs = [config.output, *([config.exitrd_output] if config.exitrd else [])]
    cache = cache or scan_cache()
    with locked_outputs(outputs), unpack_directory(cache) as unpack_dir:
        return _build_locked(config, uki_tools, cache, registry, unpack_dir)


@contextmanager
def unpack_directory(cache: ScanCache) -> Iterator[Path]:
    """Where the exitrd's extension images are unpacked: beside the scan cache, where an
    unchanged image stays unpacked between builds; without a cache, for this build."""
    if cache.directory is not None:
        yield cache.directory / "extensions"
        return
    with tempfile.TemporaryDirectory(prefix="bookend-extensions-") as directory:
        yield Path(directory)


def signing_keys(config: Config) -> dict[str, Path | None]:
    """The UKI's signing keys, absolute (bookend.resolve made them so)."""
    return {key: getattr(config, key) for key in KEY_SETTINGS}


def _build_locked(
    config: Config,
    uki_tools: UkiTools | None,
    cache: ScanCache,
    registry: Mapping[str, Feature],
    unpack_dir: Path,
) -> BuildResult:
    plan = make_plan(config, cache, registry)
    if plan.detection is not None:
        log.info("hostonly detection:\n%s", format_detection(plan.detection).rstrip())
    closure, exitrd = image_closures(config, plan, cache, unpack_dir)
    for warning in closure.warnings:
        log.warning("%s", warning)
    cache.save()
    outputs = [config.output]
    if exitrd is not None:
        outputs += [config.exitrd_output, digest_path(config.exitrd_output)]
    inputs = uptodate.inputs_digest(config, [closure, *([exitrd[1]] if exitrd else [])])
    # A UKI also holds the sysroot's kernel and stub, which the closures do not fingerprint.
    up_to_date = (
        not config.rebuild
        and uki_tools is None
        and uptodate.is_up_to_date(cache.directory, outputs, inputs)
    )
    if not up_to_date:
        _write_pair(config, closure, exitrd[1] if exitrd else None, uki_tools)
        uptodate.record_inputs(cache.directory, outputs, inputs)
    initrd = _image_result(config.output, plan, closure)
    if exitrd is None:
        return BuildResult(initrd, None, up_to_date)
    return BuildResult(initrd, _image_result(config.exitrd_output, *exitrd), up_to_date)


def image_closures(
    config: Config, plan: Plan, cache: ScanCache, unpack_dir: Path
) -> tuple[Closure, tuple[Plan, Closure] | None]:
    """The initrd's closure as it is written (with what it holds of the exitrd, and its
    manifest), and the exitrd's plan and closure: both made, and so every input error
    found, before either image is written. unpack_dir: where the exitrd's extension
    images are unpacked."""
    from bookend.exitrd import make_exitrd_plan

    initrd = build_closure(config, plan, cache)
    if not config.exitrd:
        return with_manifest(initrd), None
    exitrd_plan = make_exitrd_plan(config, plan, unpack_dir)
    exitrd = with_manifest(build_closure(config, exitrd_plan, cache))
    return with_manifest(with_exitrd(initrd, exitrd, config)), (exitrd_plan, exitrd)


def _write_pair(
    config: Config, initrd: Closure, exitrd: Closure | None, uki_tools: UkiTools | None
) -> None:
    """Both images complete beside their targets, then renamed into place together;
    the exitrd checked first to be the one whose digest the initrd holds."""
    with ExitStack() as staged:
        exitrd_file = None
        if exitrd is not None:
            exitrd_file = staged.enter_context(
                staged_image(config, exitrd, config.exitrd_output, exitrd=True)
            )
            _check_exitrd_named(initrd, exitrd_file.temporary, config.exitrd_output)
        initrd_file = staged.enter_context(
            staged_image(config, initrd) if uki_tools is None
            else _staged_uki(config, initrd, uki_tools)
        )  # fmt: skip
        _replace_pair(initrd_file, exitrd_file)


def _check_exitrd_named(initrd: Closure, written: Path, target: Path) -> None:
    """The exitrd written (at written, for target) has the digest the initrd names.

    The digest was sealed from the exitrd's closure, whose files were read again to
    write the image: one changed in between would have the loader refuse the exitrd
    at shutdown, so the build stops here instead."""
    item = initrd.entries.get(DIGEST_CONF)
    named = named_digest(item.entry.data or b"") if item is not None else None
    if named is None:
        return  # an initrd without systemd-tmpfiles names no exitrd (a warning said so)
    actual = seal_image(written).digest
    if actual != named:
        raise ArchiveError(
            f"{target}: its files changed while it was written (digest {actual}, the "
            f"initrd names {named}); nothing replaced, build again"
        )


def _image_result(output: Path, plan: Plan, closure: Closure) -> ImageResult:
    return ImageResult(output, plan, closure, output.stat().st_size)


def _staged_uki(config: Config, closure: Closure, tools: UkiTools) -> ContextManager[Staged]:
    """The UKI around the checked initrd, beside its target, not yet renamed."""
    secret = bool(closure.secrets())  # a UKI holding secrets is as secret as its initrd
    return staged_uki(
        tools,
        config.kver,
        lambda initrd: write_image(config, closure, initrd),
        config.cmdline,
        config.output,
        _check_before_replacing(config, config.output),
        0o600 if secret else 0o644,
    )


def _replace_pair(initrd: Staged, exitrd: Staged | None) -> None:
    """Rename both complete images into place: old digest out first, new digest in last.

    The digest is what makes an exitrd loadable, so the old one goes first: a build killed
    between the renames leaves a new initrd beside an exitrd without a digest, which the
    loader refuses (shutdown then powers off the normal way), never an old exitrd that
    looks like the new initrd's partner. The next build writes all three again.
    """
    if exitrd is not None:
        digest_path(exitrd.target).unlink(missing_ok=True)
    initrd.commit()
    if exitrd is not None:
        exitrd.commit()
        write_digest(exitrd.target)
