"""The build, top to bottom: config -> plan -> closure -> archive."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

from bookend.archive import open_compressor, source_date_epoch, write_atomically, write_cpio
from bookend.closure import Closure, build_closure
from bookend.config import Config
from bookend.hostonly import format_detection
from bookend.plan import Plan, make_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    plan: Plan
    closure: Closure
    size: int  # bytes of the compressed image


def write_image(config: Config, closure: Closure) -> None:
    epoch = source_date_epoch(os.environ)

    def write(out: BinaryIO) -> None:
        if closure.early:
            # The kernel finds early microcode only in an uncompressed archive at the start.
            write_cpio(list(closure.early), out, epoch=0)
        with open_compressor(config.compress, out, config.compress_level) as stream:
            write_cpio(closure.archive_entries(), stream, epoch=epoch)

    # An image holding key files is as secret as they are: readable by root only.
    mode = 0o600 if config.keyfiles else 0o644
    if config.keyfiles:
        log.warning("%s holds LUKS key files: written with mode 0600", config.output)
    write_atomically(config.output, write, mode)


def build_initrd(config: Config) -> BuildResult:
    plan = make_plan(config)
    if plan.detection is not None:
        log.info("hostonly detection:\n%s", format_detection(plan.detection).rstrip())
    closure = build_closure(config, plan)
    for warning in closure.warnings:
        log.warning("%s", warning)
    write_image(config, closure)
    return BuildResult(plan, closure, config.output.stat().st_size)
