#!/usr/bin/env python3
"""What network roots add to bookend's images (issue 14's size report).

    python3 bench/netroots.py [--kver VERSION] [--mode hostonly|generic ...] [--out FILE.md]

Builds the initrd and the exitrd for the installed kernel as a base image (the QEMU
virtio/ext4 set the other benchmark builds), base + `network`, and base + each feature
that serves a network storage kind (found from the feature declarations: nbd, iscsi, and
nfs once it exists), in each mode, and writes a markdown table per mode and image of the
sizes (compressed, content, files) and of what each adds over base and over base +
network (default: bench/results/DATE-netroots.md). A build takes seconds: the whole run
a minute or two, with no guest. Progress goes to stderr; nothing is written to /boot.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable (bench, bookend, harness).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import ImageFacts, read_image_facts, run_build
from bench.tools import FEATURE_SETS, Command, base_env, bookend_argv, progress, write_report
from bookend.archive.compress import DEFAULT_LEVELS, Compression
from bookend.features import ALL
from bookend.storage import NETWORK_STORAGE
from harness.qemu import installed_kernels

MODES = ("hostonly", "generic")
BASE_ARGS = FEATURE_SETS[0].bookend_args  # the plain ext4 set: virtio disk, ext4
MIB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    name: str
    features: tuple[str, ...]  # added to the base with --add-feature


BASE = Variant("base", ())
WITH_NETWORK = Variant("base + network", ("network",))


def network_storage_features() -> list[str]:
    """The features serving a network storage kind, by their own declaration."""
    return [name for name, feature in ALL.items() if feature.serves in NETWORK_STORAGE]


def variants() -> list[Variant]:
    """Base, base + network, then base + each network storage feature."""
    storage = [Variant(f"base + {name}", (name,)) for name in network_storage_features()]
    return [BASE, WITH_NETWORK, *storage]


@dataclass(frozen=True)
class Sizes:
    compressed: int  # bytes of the image file
    content: int  # bytes of file content, each hard-link group once
    files: int  # archive entries

    @classmethod
    def of(cls, facts: ImageFacts) -> Sizes:
        return cls(facts.compressed, facts.uncompressed, facts.entries)

    def minus(self, other: Sizes) -> Sizes:
        return Sizes(
            self.compressed - other.compressed, self.content - other.content,
            self.files - other.files,
        )  # fmt: skip


@dataclass(frozen=True)
class Built:
    variant: Variant
    mode: str
    initrd: Sizes
    exitrd: Sizes


def build(variant: Variant, mode: str, kver: str, work: Path) -> Built:
    """One `bookend build` of the variant; its initrd and exitrd read back."""
    stem = f"{mode}-{variant.name.replace(' + ', '-')}"
    initrd, exitrd = work / f"initrd-{stem}.img", work / f"exitrd-{stem}.img"
    extra = [arg for name in variant.features for arg in ("--add-feature", name)]
    argv = bookend_argv(kver, initrd, DEFAULT_LEVELS[Compression.ZSTD], mode,
                        (*BASE_ARGS, *extra, "--exitrd-output", str(exitrd)))  # fmt: skip
    run_build(Command(argv, base_env(work), initrd), work / "logs" / f"{stem}.log")
    return Built(variant, mode, Sizes.of(read_image_facts(initrd)),
                 Sizes.of(read_image_facts(exitrd)))  # fmt: skip


def measure(kver: str, modes: Sequence[str], work: Path, chosen: Sequence[Variant]) -> list[Built]:
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    built = []
    for mode in modes:
        for variant in chosen:
            progress(f"building {mode} {variant.name}")
            built.append(build(variant, mode, kver, work))
    return built


def _mib(size: int) -> str:
    return f"{size / MIB:.2f} MiB"


def _delta(change: Sizes) -> str:
    sign = "+" if change.compressed >= 0 else "-"
    content = f"{'+' if change.content >= 0 else '-'}{_mib(abs(change.content))}"
    return f"{sign}{_mib(abs(change.compressed))} ({content}, {change.files:+d} files)"


def render_table(built: Sequence[Built], mode: str, image: str) -> list[str]:
    """One markdown table: every variant of mode, for "initrd" or "exitrd"."""
    rows = {b.variant: getattr(b, image) for b in built if b.mode == mode}
    base, network = rows.get(BASE), rows.get(WITH_NETWORK)
    lines = [
        f"| {image} ({mode}) | compressed | content | files | over base | over base + network |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for variant, sizes in rows.items():
        over_base = _delta(sizes.minus(base)) if base and variant != BASE else "-"
        beyond = variant not in (BASE, WITH_NETWORK)
        over_network = _delta(sizes.minus(network)) if network and beyond else "-"
        lines.append(f"| {variant.name} | {_mib(sizes.compressed)} | {_mib(sizes.content)} | "
                     f"{sizes.files} | {over_base} | {over_network} |")  # fmt: skip
    return lines


def render_report(built: Sequence[Built], kver: str) -> str:
    modes = list(dict.fromkeys(b.mode for b in built))
    lines = [
        "# What network roots add to the images",
        "",
        f"`python3 bench/netroots.py`, {time.strftime('%Y-%m-%d')}, kernel {kver}, "
        f"{platform.machine()}, zstd level {DEFAULT_LEVELS[Compression.ZSTD]}. Base: "
        f"`bookend build --MODE {' '.join(BASE_ARGS)}`; each other row adds "
        "`--add-feature NAME` (the features serving a network storage kind, by their "
        "declaration). Content counts file bytes, each hard-link group once; an entry is "
        "a file, directory, symlink or device node. `-`: nothing to compare with.",
    ]
    for mode in modes:
        for image in ("initrd", "exitrd"):
            lines += ["", *render_table(built, mode, image)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/netroots.py", description="What network and each network root add."
    )
    parser.add_argument("--kver", help="kernel version (default: the newest in /boot)")
    parser.add_argument("--mode", action="append", choices=MODES,
                        help="hostonly or generic (repeatable; default both)")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="report file (default bench/results/DATE-netroots.md)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="work directory (default: a new one in /var/tmp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kernels = installed_kernels()
    if args.kver is None and not kernels:
        print("bench/netroots.py: no kernel in /boot; name one with --kver", file=sys.stderr)
        return 2
    kver = args.kver or kernels[-1].version
    work = args.work or Path(tempfile.mkdtemp(prefix="bookend-netroots-", dir="/var/tmp"))
    built = measure(kver, args.mode or MODES, work, variants())
    text = render_report(built, kver)
    write_report(text, args.out, "-netroots", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
