"""The tests' cache of unpacked kernels: bookend.boottest.pvh does the unpacking (see
there why an xz kernel is booted from its vmlinux), made once for all test processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bookend.boottest.pvh import (
    PHYS32_ENTRY,
    XZ_MAGIC,
    bzimage_payload,
    has_pvh_entry,
)
from bookend.boottest.pvh import direct_kernel as unpacked_kernel
from harness.rootdisk import cache_dir_default, made_once

__all__ = ["PHYS32_ENTRY", "XZ_MAGIC", "bzimage_payload", "direct_kernel", "has_pvh_entry"]


def direct_kernel(kernel: Path, cache_dir: Path | None = None) -> Path:
    """The vmlinux to give QEMU for kernel (in the tests' cache), or kernel itself."""
    directory = cache_dir or cache_dir_default()

    def once(result: Path, key: str, make: Callable[[], None]) -> None:
        made_once("unpacked kernel", result, directory / f"{result.name}.lock", key, make)

    return unpacked_kernel(kernel, directory, once)
