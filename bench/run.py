#!/usr/bin/env python3
"""Benchmark bookend against dracut and initramfs-tools on this machine (issue 7).

    python3 bench/run.py [--runs 5] [--boots 3] [--quick] [--out FILE.md]

Builds an image for the installed kernel with every generator, for each feature
set, measures the builds and the images, boots the plain-ext4 images in QEMU
and writes a markdown report (default: bench/results/<date>.md). Progress goes
to stderr. Never writes /boot; everything else goes under --work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable (bench, bookend, harness).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import notes
from bench.guest import GuestTimes, boot_once, make_bench_job_disk
from bench.measure import (
    BuildFailed,
    Sample,
    missing_paths,
    read_image_facts,
    run_again,
    run_build,
)
from bench.report import BootStats, BuildStats, Generator, Spread
from bench.tools import (
    DEFAULT_CACHE,
    FEATURE_SETS,
    GENERATORS,
    FeatureSet,
    Setup,
    command_for,
    progress,
    write_report,
)
from bookend.archive.compress import DEFAULT_LEVELS, Compression
from harness.foreign import ensure_dracut, unpack_debs
from harness.qemu import Disk, installed_kernels
from harness.rootdisk import ensure_root_disk

DEFAULT_LEVEL = DEFAULT_LEVELS[Compression.ZSTD]  # bookend's own zstd default, given to every tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure bookend, dracut and mkinitramfs builds and boots on this machine.",
    )
    parser.add_argument("--runs", type=int, default=5, help="builds per image (default 5)")
    parser.add_argument("--boots", type=int, default=3, help="QEMU boots per image (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 run and 1 boot, for trying out")
    parser.add_argument("--out", type=Path, help="report file (default bench/results/DATE.md)")
    parser.add_argument(
        "--zstd-level",
        type=int,
        default=DEFAULT_LEVEL,
        help=f"zstd level for every tool (default {DEFAULT_LEVEL})",
    )
    parser.add_argument(
        "--generator",
        action="append",
        choices=[g.key for g in GENERATORS],
        help="only this generator (repeatable; default all)",
    )
    parser.add_argument(
        "--feature-set",
        action="append",
        choices=[f.key for f in FEATURE_SETS],
        help="only this feature set (repeatable; default all)",
    )
    parser.add_argument("--work", type=Path, help="work directory (default: a new one in /var/tmp)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the unpacked dracut stays (default {DEFAULT_CACHE})",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.boots = 1, 1
    if args.runs < 1 or args.boots < 0:
        parser.error("--runs must be at least 1 and --boots at least 0")
    return args


def image_path(generator: str, features: FeatureSet, setup: Setup) -> Path:
    return setup.work / "images" / f"initrd-{generator}-{features.key}.img"


def build_once(generator: str, features: FeatureSet, setup: Setup, index: int) -> Sample:
    command = command_for(generator, features, image_path(generator, features, setup), setup)
    name = f"{generator}-{features.key}"
    sample = run_build(command, setup.work / "logs" / f"{name}-{index}.log")
    progress(f"  {name} build {index + 1}: {sample.wall:.2f} s")
    return sample


def build_stats(
    generator: str, features: FeatureSet, setup: Setup, samples: list[Sample]
) -> BuildStats:
    """The builds' numbers and the last image's, once it proved to hold the feature set."""
    image = image_path(generator, features, setup)
    facts = read_image_facts(image)
    expected = features.expect_systemd
    if generator.startswith("mkinitramfs"):
        expected = features.expect_initramfs_tools
    missing = missing_paths(facts.paths, expected)
    if missing:
        raise BuildFailed(f"{image}: lacks {', '.join(missing)}: not the feature set asked for")
    return BuildStats(
        wall=Spread.of([s.wall for s in samples]),
        cpu=Spread.of([s.cpu for s in samples]),
        peak_rss_kib=Spread.of([s.peak_rss_kib for s in samples]),
        compressed=facts.compressed,
        uncompressed=facts.uncompressed,
        entries=facts.entries,
        identical=samples[0].sha256 == samples[1].sha256,
    )


def rebuild_spread(features: FeatureSet, setup: Setup, runs: int) -> Spread:
    """bookend hostonly built again onto its existing image, nothing changed."""
    command = command_for(
        "bookend-hostonly", features, setup.work / "images" / "rebuild.img", setup
    )
    run_build(command, setup.work / "logs" / "rebuild-first.log")
    walls = []
    for index in range(runs):
        sample = run_again(command, setup.work / "logs" / f"rebuild-{index}.log")
        progress(f"  bookend-hostonly rebuild {index + 1}: {sample.wall:.2f} s")
        walls.append(sample.wall)
    return Spread.of(walls)


def boot_one(
    generator: str, features: FeatureSet, setup: Setup, job: Disk, index: int
) -> GuestTimes:
    image = setup.work / "images" / f"initrd-{generator}-{features.key}.img"
    log = setup.work / "logs" / f"boot-{generator}-{features.key}-{index}.log"
    kernel = Path("/boot") / f"vmlinuz-{setup.kver}"
    found = boot_once(kernel, image, ensure_root_disk(), job, log)
    progress(
        f"  {generator} boot {index + 1}: switch-root {found.switch_root:.2f} s, "
        f"default target {found.default_target:.2f} s"
    )
    return found


def prepare(args: argparse.Namespace, work: Path) -> tuple[Setup, dict[str, list[str]]]:
    kernels = installed_kernels()
    if not kernels:
        sys.exit("bench: no kernel in /boot (install linux-image-amd64)")
    for directory in ("tmp", "images", "logs"):
        (work / directory).mkdir(parents=True, exist_ok=True)
    progress("unpacking dracut and the cryptsetup initramfs hooks (apt-get download)")
    dracut_root, dracut_versions = ensure_dracut(args.cache)
    debs = {
        "dracut": dracut_versions,
        "cryptsetup": unpack_debs(
            ("cryptsetup-initramfs", "cryptsetup"), args.cache, args.cache / "cryptsetup"
        ),
    }
    setup = Setup(
        kver=kernels[-1].version,
        zstd_level=args.zstd_level,
        work=work,
        dracut_root=dracut_root,
        crypt_root=args.cache / "cryptsetup",
    )
    return setup, debs


def build_all(
    features: FeatureSet, generators: list[Generator], setup: Setup, runs: int, failures: list[str]
) -> dict[str, BuildStats]:
    """Rounds of one build per generator (at least two rounds, to compare bytes): a
    change in the shared machine's load then reaches every generator alike. A
    generator whose build failed is built no more."""
    samples: dict[str, list[Sample]] = {g.key: [] for g in generators}
    for index in range(max(runs, 2)):
        progress(f"build round {index + 1} of {max(runs, 2)} ({features.label})")
        for generator in list(samples):
            try:
                samples[generator].append(build_once(generator, features, setup, index))
            except BuildFailed as failure:
                record_failure(failures, generator, features, str(failure))
                del samples[generator]
    builds = {}
    for generator, found in samples.items():
        try:
            builds[generator] = build_stats(generator, features, setup, found)
        except BuildFailed as failure:
            record_failure(failures, generator, features, str(failure))
    return builds


def record_failure(failures: list[str], generator: str, features: FeatureSet, why: str) -> None:
    failures.append(f"{generator} ({features.key}): {why}")
    progress(f"  FAILED: {why}")


def boot_all(
    features: FeatureSet, built: list[str], setup: Setup, boots: int, failures: list[str]
) -> dict[str, BootStats]:
    """boots rounds of one boot per image: a change in the shared machine's load
    during the boots then reaches every generator alike, not only the last ones."""
    job = make_bench_job_disk(setup.work / "job.img", setup.work)
    times: dict[str, list[GuestTimes]] = {generator: [] for generator in built}
    for index in range(boots):
        progress(f"boot round {index + 1} of {boots} ({features.label})")
        for generator in [g for g in built if g in times]:
            try:
                times[generator].append(boot_one(generator, features, setup, job, index))
            except AssertionError as failure:
                # The console's tail is in the log the message names; a generator
                # that failed once is booted no more.
                record_failure(failures, generator, features, str(failure).splitlines()[0])
                del times[generator]
    return {
        generator: BootStats(
            switch_root=Spread.of([t.switch_root for t in found]),
            default_target=Spread.of([t.default_target for t in found]),
        )
        for generator, found in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bookend-bench-", dir="/var/tmp"))
    before = notes.machine_state()
    setup, debs = prepare(args, work)
    generators = [g for g in GENERATORS if not args.generator or g.key in args.generator]
    feature_sets = [f for f in FEATURE_SETS if not args.feature_set or f.key in args.feature_set]
    results: list[notes.SetResults] = []
    failures: list[str] = []
    rebuild = None
    for features in feature_sets:
        builds = build_all(features, generators, setup, args.runs, failures)
        if features.key == "ext4" and "bookend-hostonly" in builds:
            progress("rebuilding bookend hostonly with nothing changed")
            rebuild = rebuild_spread(features, setup, args.runs)
        boots = {}
        booted = [g.key for g in generators if g.booted and g.key in builds]
        if features.boot and args.boots:
            boots = boot_all(features, booted, setup, args.boots, failures)
        results.append(notes.SetResults(features, builds, boots))
    report = notes.Report(
        args.runs, args.boots, setup, generators, results, rebuild, debs, failures,
        notes.dracut_fell_back(work / "logs"),
    )  # fmt: skip
    text = notes.render_report(report, before, notes.machine_state())
    write_report(text, args.out, "", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
