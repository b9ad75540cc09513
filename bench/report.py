"""The pure half of the benchmark: numbers in, markdown out.

Nothing here runs a program or reads the clock, so the unit tests can feed it
fixture numbers: summaries (median, min, max), bookend/dracut ratios, the
per-feature-set tables and the targets table of issue 7.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with the smallest and the largest."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class Generator:
    """One way of building an image: a column of the tables."""

    key: str  # e.g. "dracut-hostonly"
    label: str  # the column heading
    booted: bool = True  # whether its plain-ext4 image is booted too


@dataclass(frozen=True)
class BuildStats:
    """What repeated builds of one generator and feature set measured."""

    wall: Spread  # seconds
    cpu: Spread  # seconds of user + system time, children included
    peak_rss_kib: Spread  # the largest resident set of the tool or any child
    compressed: int  # bytes of the image file
    uncompressed: int  # bytes of file content in the image (each hard link once)
    entries: int
    identical: bool  # two builds gave the same SHA-256


@dataclass(frozen=True)
class BootStats:
    """Guest times (seconds since the kernel started) over repeated boots."""

    switch_root: Spread
    default_target: Spread


@dataclass(frozen=True)
class Comparison:
    """A ratio column: bookend's median over another generator's."""

    numerator: str  # a Generator key
    denominator: str
    label: str


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Row:
    """A metric: its name, how to take its number from the stats, how to print it."""

    name: str
    value: Callable[[BuildStats | None, BootStats | None], float | None]
    show: Callable[[BuildStats | None, BootStats | None], str]
    comparable: bool = True  # whether a ratio of this row means anything


def _seconds(spread: Spread) -> str:
    return f"{spread.median:.2f} ({spread.low:.2f}-{spread.high:.2f})"


def _mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def _build_row(
    name: str, pick: Callable[[BuildStats], float], show: Callable[[BuildStats], str]
) -> Row:
    return Row(
        name,
        lambda build, _boot: pick(build) if build else None,
        lambda build, _boot: show(build) if build else "-",
    )


def _boot_row(name: str, pick: Callable[[BootStats], Spread]) -> Row:
    return Row(
        name,
        lambda _build, boot: pick(boot).median if boot else None,
        lambda _build, boot: _seconds(pick(boot)) if boot else "-",
    )


ROWS = (
    _build_row("build wall time, s: median (min-max)", lambda b: b.wall.median,
               lambda b: _seconds(b.wall)),
    _build_row("CPU time (user+sys), s: median", lambda b: b.cpu.median,
               lambda b: f"{b.cpu.median:.2f}"),
    _build_row("peak memory, MiB: median", lambda b: b.peak_rss_kib.median * 1024,
               lambda b: _mib(b.peak_rss_kib.median * 1024)),
    _build_row("image size compressed, MiB", lambda b: b.compressed,
               lambda b: _mib(b.compressed)),
    _build_row("content uncompressed, MiB", lambda b: b.uncompressed,
               lambda b: _mib(b.uncompressed)),
    _build_row("entries", lambda b: b.entries, lambda b: str(b.entries)),
    Row(
        "byte-identical across two builds",
        lambda _build, _boot: None,
        lambda build, _boot: ("yes" if build.identical else "no") if build else "-",
        comparable=False,
    ),
    _boot_row("guest: switch-root, s: median (min-max)", lambda b: b.switch_root),
    _boot_row("guest: default target, s: median (min-max)", lambda b: b.default_target),
)  # fmt: skip


def _cell_ratio(
    row: Row,
    comparison: Comparison,
    builds: dict[str, BuildStats],
    boots: dict[str, BootStats],
) -> str:
    if not row.comparable:
        return "-"

    def value(key: str) -> float | None:
        return row.value(builds.get(key), boots.get(key))

    found = ratio(value(comparison.numerator), value(comparison.denominator))
    return "-" if found is None else f"{found:.2f}"


def render_table(
    generators: Sequence[Generator],
    comparisons: Sequence[Comparison],
    builds: dict[str, BuildStats],
    boots: dict[str, BootStats],
) -> str:
    """One markdown table: a row per metric, a column per generator, then the ratios."""
    heading = ["", *(g.label for g in generators), *(c.label for c in comparisons)]
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    for row in ROWS:
        cells = [row.name]
        cells += [row.show(builds.get(g.key), boots.get(g.key)) for g in generators]
        cells += [_cell_ratio(row, c, builds, boots) for c in comparisons]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Target:
    """A goal of issue 7: measured must not exceed limit."""

    name: str
    measured: float | None
    limit: float
    unit: str = "x"  # "x" for a ratio, "s" for seconds


def render_targets(targets: Sequence[Target]) -> str:
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for target in targets:
        if target.measured is None:
            measured, met = "not measured", "-"
        else:
            measured = f"{target.measured:.2f} {target.unit}"
            met = "yes" if target.measured <= target.limit else "no"
        lines.append(f"| {target.name} | {measured} | {target.limit:g} {target.unit} | {met} |")
    return "\n".join(lines) + "\n"


HOSTONLY_COMPARISONS = (
    Comparison("bookend-hostonly", "dracut-hostonly", "bookend/dracut hostonly"),
    Comparison("bookend-generic", "dracut-generic", "bookend/dracut generic"),
    Comparison("bookend-hostonly", "mkinitramfs-dep", "bookend hostonly/mkinitramfs dep"),
)


def _median(stats: BuildStats | None, pick: Callable[[BuildStats], float]) -> float | None:
    return pick(stats) if stats else None


def issue_targets(
    builds: dict[str, BuildStats], boots: dict[str, BootStats], rebuild: Spread | None
) -> list[Target]:
    """The goals of issues 7 and 18, from one feature set's measurements (plain ext4)."""
    bookend, dracut = builds.get("bookend-hostonly"), builds.get("dracut-hostonly")
    mkinitramfs = builds.get("mkinitramfs-dep")

    def wall(b: BuildStats) -> float:
        return b.wall.median

    def size(b: BuildStats) -> float:
        return b.compressed

    bookend_boot, dracut_boot = boots.get("bookend-hostonly"), boots.get("dracut-hostonly")
    shell_boot = boots.get("mkinitramfs-dep")

    def switch_root(b: BootStats | None) -> float | None:
        return b.switch_root.median if b else None

    return [
        Target("build time: bookend hostonly / dracut --hostonly",
               ratio(_median(bookend, wall), _median(dracut, wall)), 0.1),
        Target("build time: bookend hostonly / mkinitramfs MODULES=dep",
               ratio(_median(bookend, wall), _median(mkinitramfs, wall)), 0.5),
        Target("rebuild with nothing changed (bookend hostonly)",
               rebuild.median if rebuild else None, 0.3, "s"),
        Target("image size: bookend hostonly / dracut --hostonly (same zstd level)",
               ratio(_median(bookend, size), _median(dracut, size)), 0.7),
        Target("guest time to switch-root: bookend hostonly / dracut --hostonly",
               ratio(switch_root(bookend_boot), switch_root(dracut_boot)), 0.9),
        # Issue 18: systemd as PID 1, yet no slower than initramfs-tools' shell initrd.
        Target("guest time to switch-root: bookend hostonly / mkinitramfs MODULES=dep",
               ratio(switch_root(bookend_boot), switch_root(shell_boot)), 1.0),
    ]  # fmt: skip


def build_time_bound(builds: dict[str, BuildStats], limit: float = 0.1) -> str | None:
    """What bounds bookend hostonly's build time: the same build written uncompressed
    (bookend-uncompressed) against the compressed one, both against dracut --hostonly."""
    whole, bare = builds.get("bookend-hostonly"), builds.get("bookend-uncompressed")
    dracut = builds.get("dracut-hostonly")
    if whole is None or bare is None or dracut is None:
        return None
    goal = limit * dracut.wall.median
    compressing = whole.wall.median - bare.wall.median
    verdict = (
        f"met: {whole.wall.median:.2f} s <= {goal:.2f} s"
        if whole.wall.median <= goal
        else f"missed by {whole.wall.median - goal:.2f} s ({whole.wall.median:.2f} s against "
        f"{goal:.2f} s, {limit:g} x dracut's {dracut.wall.median:.2f} s)"
    )
    return (
        f"Build time target ({limit:g} x dracut --hostonly) {verdict}. What bounds it: the "
        f"same build of both images written uncompressed takes {bare.wall.median:.2f} s "
        f"({bare.wall.median / dracut.wall.median:.2f} x dracut; CPU {bare.cpu.median:.2f} s), "
        f"so compressing them takes {compressing:.2f} s of the {whole.wall.median:.2f} s "
        f"(CPU {whole.cpu.median - bare.cpu.median:.2f} s).\n"
    )
