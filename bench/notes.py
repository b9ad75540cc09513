"""The report around the tables: the machine, the tool versions, how it was measured."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report import (
    HOSTONLY_COMPARISONS,
    BootStats,
    BuildStats,
    Generator,
    Spread,
    build_time_bound,
    issue_targets,
    render_table,
    render_targets,
)
from bench.tools import ROOT, SOURCE_DATE_EPOCH, FeatureSet, Setup
from bookend.archive.compress import DEFAULT_LEVELS, Compression


@dataclass(frozen=True)
class SetResults:
    features: FeatureSet
    builds: dict[str, BuildStats]
    boots: dict[str, BootStats]


@dataclass(frozen=True)
class MachineState:
    when: str
    load: tuple[float, float, float]


def machine_state() -> MachineState:
    return MachineState(time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg())


def _output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _load(state: MachineState) -> str:
    return " / ".join(f"{value:.2f}" for value in state.load)


def machine_notes(setup: Setup, debs: dict[str, list[str]], before: MachineState,
                  after: MachineState) -> list[str]:  # fmt: skip
    dpkg = ["dpkg-query", "-W", "-f", "${Version}"]
    return [
        f"- Run: {before.when} to {after.when}.",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, running kernel "
        f"{platform.release()}; images built for the installed kernel {setup.kver}.",
        f"- Load average (1/5/15 min): {_load(before)} at the start, {_load(after)} at the end. "
        "The machine is shared with other engineers' builds and test guests, so every "
        "time here is noisy; compare ratios from one run, not times across runs.",
        f"- bookend: this checkout, {_output(['git', 'describe', '--always', '--dirty'])}, "
        f"Python {platform.python_version()}.",
        f"- dracut: {', '.join(debs['dracut'])}; initramfs-tools "
        f"{_output([*dpkg, 'initramfs-tools'])} (cryptsetup hooks from "
        f"{', '.join(debs['cryptsetup'])}); systemd {_output([*dpkg, 'systemd'])}.",
    ]


FALLBACK_SEEN = """\
- **dracut --hostonly on this host**: the running kernel has no loadable modules
  (`/proc/modules` is missing), so `dracut-install` could not keep to the modules
  loaded here and said "Switching to non-hostonly mode": its hostonly image holds every
  kernel module its (hostonly-chosen) dracut modules ask for, not only those this machine
  uses. bookend's hostonly reads `/sys` and `/proc/self/mountinfo` instead."""
FALLBACK_NOT_SEEN = """\
- **dracut --hostonly**: its kernel modules were chosen hostonly (no fallback to its
  generic set was logged)."""

METHOD = """\
- **How dracut ran**: the packages `dracut-core` and `dracut` conflict with
  `initramfs-tools` in Debian, and this host keeps `initramfs-tools`. So dracut was *not
  installed*: `apt-get download` fetched its .debs, `dpkg-deb -x` unpacked them into
  `{dracut}`, and `usr/bin/dracut` ran from there with `dracutbasedir=` pointing at the
  unpacked `usr/lib/dracut` (its modules and `dracut-install`), `--conf`/`--confdir`
  from the package, on the host's own files (same kernel, same systemd, same libraries as
  the other two). Each dracut image was checked to contain dracut's systemd module output
  (`lib/systemd/systemd` and `initrd.target`).
- **Same compressor and level**: every image is zstd level {level}: bookend
  `--compress zstd --compress-level {level}`, dracut `--compress "zstd -{level} -q -T0"`,
  mkinitramfs `-c zstd -l {level}` (zstd without `-T0`: mkinitramfs gives no way to add it).
  The tools' defaults differ: bookend zstd {bookend_level} (multithreaded); dracut 059 gzip -9 (pigz
  when installed); Debian's initramfs-tools zstd -9 (single thread).
  bookend's exitrd (the image it writes beside the initrd, which nothing unpacks at
  boot) keeps its own default, `exitrd_compress` zstd 3.
  The one exception is *bookend hostonly uncompressed*: the hostonly build with
  `--compress none --exitrd-compress none`, built in the same rounds and not booted,
  which shows how much of bookend's time compression takes.
- **Same feature set**: each tool is told the guest's modules (`virtio_blk virtio_pci
  ext4`: bookend `--add-module`/`--filesystem`, dracut `--add-drivers`/`--filesystems`,
  mkinitramfs its conf dir's `modules` file), since this host's root device is not the
  guest's. mkinitramfs runs with a copy of `/etc/initramfs-tools` (`-d DIR`) whose
  `MODULES=` is `dep` or `most`. dracut also gets `--no-hostonly-cmdline` (the host's
  root options must not be baked into an image that boots the test disk).
- **LUKS+LVM forced** (this host has no device-mapper, so no hostonly detection can see
  it): bookend `--add-feature luks --add-feature lvm`; dracut `--add "crypt lvm"`;
  mkinitramfs: the hook and boot scripts of `cryptsetup-initramfs` (unpacked like dracut)
  are put in the copied conf dir's `hooks/` and `scripts/` (their `/lib/cryptsetup`
  reads redirected into the unpacked package), and its hook always adds cryptsetup,
  dm-crypt and dmsetup, crypttab or not; `lvm2`'s own hook is installed on the host and
  runs for every mkinitramfs image, so even the plain ext4 ones carry lvm. Images checked
  for `systemd-cryptsetup` and `lvm` (bookend, dracut) or `cryptsetup`, `lvm` and the
  `cryptroot` script (mkinitramfs). Not booted.
{fallback}
- **Build numbers**: the builds go in rounds, one build of every image per round, so a
  change of the machine's load reaches all generators alike; wall time is the median
  (min-max) of the runs; CPU time (user+system) and peak memory (`ru_maxrss`) come from
  `os.wait4` on the tool, which covers every child it waited for (dracut's cpio and zstd,
  mkinitramfs' hooks). bookend runs with its defaults otherwise, so its time includes
  writing the exitrd beside the initrd, which the other tools do not make.
- **Image numbers** (read back with bookend's own reader, all segments): compressed = the
  image file's size; uncompressed = the bytes of file content in the image (each hard
  link once); entries = every cpio member, directories and links included.
- **Byte-identical**: the builds of rounds 1 and 2, both with
  `SOURCE_DATE_EPOCH={epoch}` (dracut also `--reproducible`), compared by SHA-256.
- **Rebuild**: `bookend build` again onto its existing image with nothing changed; the
  median (min-max) of the runs.
- **Guest times** (QEMU `-accel tcg`, 2 vCPUs, 1 GiB, the shared cached Debian root disk
  on virtio, `root=UUID=... rw` on the command line, same kernel): seconds since the
  kernel started, CLOCK_MONOTONIC as the real root's systemd records them, printed by a
  transient unit after `multi-user.target` (the disk's default target).
  *switch-root* = `UserspaceTimestampMonotonic`, when the real root's PID 1 started:
  the switch-root of a systemd initrd, and for initramfs-tools (no systemd in its initrd)
  when its `/init` exec'd the root's systemd. *default target* =
  `multi-user.target`'s `ActiveEnterTimestampMonotonic` less the run time of the bench's
  own job unit, which the target waits for. The boots go in rounds, one boot of every
  image per round, so a change of the machine's load reaches all generators alike. Every
  boot proved itself with the random token the root disk's report unit prints."""


@dataclass(frozen=True)
class Report:
    """Everything one run measured, and how it was asked for."""

    runs: int
    boots: int
    setup: Setup
    generators: Sequence[Generator]
    results: Sequence[SetResults]
    rebuild: Spread | None
    debs: dict[str, list[str]]
    failures: Sequence[str]
    dracut_fell_back: bool  # dracut --hostonly took its generic module set


FALLBACK = "Switching to non-hostonly mode"


def dracut_fell_back(logs: Path) -> bool:
    """Whether a dracut --hostonly build said it could not be hostonly for modules."""
    return any(FALLBACK in log.read_text(errors="replace")
               for log in logs.glob("dracut-hostonly-*.log"))  # fmt: skip


def render_report(report: Report, before: MachineState, after: MachineState) -> str:
    parts = [
        "# bookend benchmark\n",
        f"`python3 bench/run.py --runs {report.runs} --boots {report.boots}`: {report.runs} "
        "build(s) per image (at least 2, to compare bytes), "
        f"{report.boots} boot(s) per plain-ext4 image.\n",
    ]
    wanted = {g.key for g in report.generators}
    comparisons = [c for c in HOSTONLY_COMPARISONS if {c.numerator, c.denominator} <= wanted]
    for result in report.results:
        parts.append(f"## {result.features.label}\n")
        parts.append(render_table(report.generators, comparisons, result.builds, result.boots))
        if result.features.key == "ext4" and report.rebuild is not None:
            rebuild = report.rebuild
            parts.append(
                f"Rebuild with nothing changed (bookend hostonly): {rebuild.median:.2f} s "
                f"median ({rebuild.low:.2f}-{rebuild.high:.2f}).\n"
            )
    plain = next((r for r in report.results if r.features.key == "ext4"), None)
    if plain is not None:
        parts.append("## Targets of issues 7 and 18 (plain ext4, ratios of medians of this run)\n")
        parts.append(render_targets(issue_targets(plain.builds, plain.boots, report.rebuild)))
        bound = build_time_bound(plain.builds)
        if bound is not None:
            parts.append(bound)
    if report.failures:
        parts.append("## Failures (their cells say -)\n")
        parts.append("".join(f"- {failure}\n" for failure in report.failures))
    parts.append("## Notes\n")
    parts.append("\n".join(machine_notes(report.setup, report.debs, before, after)))
    parts.append(_method(report) + "\n")
    return "\n".join(parts)


def _method(report: Report) -> str:
    setup = report.setup
    fallback = FALLBACK_SEEN if report.dracut_fell_back else FALLBACK_NOT_SEEN
    return METHOD.format(
        dracut=setup.dracut_root, level=setup.zstd_level, epoch=SOURCE_DATE_EPOCH,
        fallback=fallback, bookend_level=DEFAULT_LEVELS[Compression.ZSTD],
    )  # fmt: skip
