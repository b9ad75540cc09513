#!/usr/bin/env python3
"""How long the kernel takes to unpack bookend's initrd, per compressor (issue 18).

    python3 bench/unpack.py [--boots 1] [--compress zstd ...] [--out FILE.md]

Builds bookend's hostonly initrd for the plain ext4 root (the feature set of
bench/run.py) once per compressor at bookend's default level, boots each in QEMU
(`-accel tcg`) into the shared test root disk and reads the guest's kernel log:
the unpack is the time from "Trying to unpack rootfs image as initramfs" to
"Freeing initrd memory" (the kernel unpacks in a worker while the rest of its
start-up goes on, and waits for it before running /init). Also reported: when
the kernel ran /init and when the real root's systemd started (switch-root).
The boots go in rounds, one of every compressor per round, so a change in the
machine's load reaches them alike. Writes bench/results/<date>-unpack.md and stdout.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.guest import boot_once, make_bench_job_disk
from bench.report import Spread
from bench.tools import FEATURE_SETS, base_env, progress, write_report
from bookend.archive.compress import DEFAULT_LEVELS, Compression
from harness.qemu import installed_kernels
from harness.rootdisk import ensure_root_disk

KERNEL_LINE = r"^\[\s*(\d+\.\d+)\] [^\n]*"
UNPACK_START = re.compile(KERNEL_LINE + r"Trying to unpack rootfs image as initramfs", re.M)
UNPACK_END = re.compile(KERNEL_LINE + r"Freeing initrd memory", re.M)
RUN_INIT = re.compile(KERNEL_LINE + r"Run /init as init process", re.M)


@dataclass(frozen=True)
class KernelTimes:
    unpack: float  # seconds the kernel spent unpacking the image
    run_init: float  # seconds since the kernel started, when it ran /init


def kernel_times(console: str) -> KernelTimes:
    """The unpack's length and /init's start from a guest's console log."""
    found = [pattern.search(console) for pattern in (UNPACK_START, UNPACK_END, RUN_INIT)]
    if any(match is None for match in found):
        raise ValueError("console log: no unpack start, unpack end or /init line")
    start, end, run_init = (float(match.group(1)) for match in found if match is not None)
    return KernelTimes(unpack=end - start, run_init=run_init)


@dataclass(frozen=True)
class Row:
    compression: Compression
    size: int  # bytes, compressed
    unpack: Spread
    run_init: Spread
    switch_root: Spread


def render(rows: list[Row], boots: int, kver: str, content: int) -> str:
    lines = [
        f"# Kernel unpack time per compressor ({kver}, {boots} boot(s) each, TCG)\n",
        f"bookend hostonly, plain ext4 root: {content / 2**20:.1f} MiB of cpio content.\n",
        "| compressor (level) | image, MiB | unpack, s | /init at, s | switch-root at, s |",
        "|---|--:|--:|--:|--:|",
    ]
    for row in rows:
        level = DEFAULT_LEVELS[row.compression]
        name = row.compression.value + (
            f" ({level})" if row.compression is not Compression.NONE else ""
        )
        lines.append(
            f"| {name} | {row.size / 2**20:.2f} | {row.unpack.median:.2f} "
            f"| {row.run_init.median:.2f} | {row.switch_root.median:.2f} |"
        )
    lines.append(
        "\nMedians. unpack: from the kernel's `Trying to unpack rootfs image as initramfs`"
        " to `Freeing initrd memory` (guest clock); /init at: the kernel's `Run /init`;"
        " switch-root at: the real root's UserspaceTimestampMonotonic (bench/guest.py)."
    )
    return "\n".join(lines) + "\n"


def build(compression: Compression, kver: str, work: Path) -> Path:
    output = work / f"initrd-{compression.value}.img"
    plain = FEATURE_SETS[0]
    argv = [sys.executable, "-m", "bookend", "build", "--kver", kver, "-o", str(output),
            "--compress", compression.value, "--no-exitrd", "--hostonly",
            *plain.bookend_args]  # fmt: skip
    subprocess.run(argv, env=base_env(work), check=True, stdout=subprocess.DEVNULL)
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/unpack.py", description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=1, help="boots per compressor (default 1)")
    parser.add_argument("--compress", action="append", choices=[c.value for c in Compression],
                        help="only this compressor (repeatable; default all)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="report (default bench/results/DATE-unpack.md)")
    parser.add_argument("--work", type=Path, help="work directory (default: new in /var/tmp)")
    args = parser.parse_args(argv)
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kernels = installed_kernels()
    if not kernels:
        sys.exit("bench: no kernel in /boot (install linux-image-amd64)")
    kver = kernels[-1].version
    work = args.work or Path(tempfile.mkdtemp(prefix="bookend-unpack-", dir="/var/tmp"))
    for directory in ("tmp", "logs"):
        (work / directory).mkdir(parents=True, exist_ok=True)
    chosen = [c for c in Compression if not args.compress or c.value in args.compress]
    images = {c: build(c, kver, work) for c in chosen}
    job = make_bench_job_disk(work / "job.img", work)
    kernel = Path("/boot") / f"vmlinuz-{kver}"
    found: dict[Compression, list[tuple[KernelTimes, float]]] = {c: [] for c in chosen}
    for index in range(args.boots):
        for compression, image in images.items():
            log = work / "logs" / f"boot-{compression.value}-{index}.log"
            guest = boot_once(kernel, image, ensure_root_disk(), job, log)
            times = kernel_times(log.read_text(errors="replace"))
            progress(f"  {compression.value} boot {index + 1}: unpack {times.unpack:.2f} s, "
                     f"/init {times.run_init:.2f} s, "
                     f"switch-root {guest.switch_root:.2f} s")  # fmt: skip
            found[compression].append((times, guest.switch_root))
    rows = [
        Row(compression, images[compression].stat().st_size,
            Spread.of([t.unpack for t, _ in runs]), Spread.of([t.run_init for t, _ in runs]),
            Spread.of([s for _, s in runs]))
        for compression, runs in found.items()
    ]  # fmt: skip
    content = images[Compression.NONE].stat().st_size if Compression.NONE in images else 0
    write_report(render(rows, args.boots, kver, content), args.out, "-unpack", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
