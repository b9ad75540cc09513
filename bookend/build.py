"""The build, top to bottom: config -> plan -> closure -> archive, for both images."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bookend import uptodate
from bookend.archive import open_compressor, source_date_epoch, write_atomically, write_cpio
from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.errors import ArchiveError
from bookend.exitrd_load import digest_path
from bookend.hostonly import format_detection
from bookend.manifest import with_manifest
from bookend.plan import Plan, make_plan
from bookend.scancache import ScanCache, default_directory

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
    epoch = source_date_epoch(os.environ)

    def write(out: BinaryIO) -> None:
        if closure.early:
            # The kernel finds early microcode only in an uncompressed archive at the start.
            write_cpio(list(closure.early), out, epoch=0)
        with open_compressor(config.compress, out, config.compress_level) as stream:
            write_cpio(closure.archive_entries(), stream, epoch=epoch)

    target = output or config.output
    # An initrd holding key files is as secret as they are: readable by root only.
    secret = config.keyfiles and target == config.output
    if secret:
        log.warning("%s holds LUKS key files: written with mode 0600", target)
    # Only the initrd is checked: it is what stops a boot, and what the user replaces.
    verify = _check_before_replacing(config, target) if output is None else None
    write_atomically(target, write, 0o600 if secret else 0o644, verify)


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


def build_initrd(config: Config) -> BuildResult:
    cache = ScanCache(default_directory(os.environ))
    plan = make_plan(config, cache)
    if plan.detection is not None:
        log.info("hostonly detection:\n%s", format_detection(plan.detection).rstrip())
    closure = with_manifest(build_closure(config, plan, cache))
    for warning in closure.warnings:
        log.warning("%s", warning)
    # Both closures are made, and so every input error found, before either is written;
    # the exitrd is written only once the initrd passed its check and replaced the old one.
    exitrd_closure = _exitrd_closure(config, plan, cache) if config.exitrd else None
    cache.save()
    outputs = [config.output]
    if exitrd_closure:
        outputs += [config.exitrd_output, digest_path(config.exitrd_output)]
    closures = [closure, exitrd_closure[1]] if exitrd_closure else [closure]
    inputs = uptodate.inputs_digest(config, closures)
    if not config.rebuild and uptodate.is_up_to_date(cache.directory, outputs, inputs):
        initrd = ImageResult(config.output, plan, closure, config.output.stat().st_size)
        exitrd = _image_result(config.exitrd_output, *exitrd_closure) if exitrd_closure else None
        return BuildResult(initrd, exitrd, up_to_date=True)
    write_image(config, closure)
    initrd = ImageResult(config.output, plan, closure, config.output.stat().st_size)
    exitrd = _write_exitrd(config, *exitrd_closure) if exitrd_closure else None
    uptodate.record_inputs(cache.directory, outputs, inputs)
    return BuildResult(initrd, exitrd)


def _exitrd_closure(config: Config, initrd_plan: Plan, cache: ScanCache) -> tuple[Plan, Closure]:
    from bookend.exitrd import make_exitrd_plan

    plan = make_exitrd_plan(config, initrd_plan)
    return plan, with_manifest(build_closure(config, plan, cache))


def _write_exitrd(config: Config, plan: Plan, closure: Closure) -> ImageResult:
    """The exitrd's image and digest."""
    output = config.exitrd_output
    write_image(config, closure, output)
    write_digest(output)
    return _image_result(output, plan, closure)


def _image_result(output: Path, plan: Plan, closure: Closure) -> ImageResult:
    return ImageResult(output, plan, closure, output.stat().st_size)
