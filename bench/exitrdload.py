#!/usr/bin/env python3
"""What loading the installed exitrd costs, at shutdown and while running (issue 20).

    python3 bench/exitrdload.py [--boots 3] [--runs 5] [--guest debian12|debian13]
                                [--out FILE] [--work DIR]

For Debian 12 (this host's tree and kernel, the cached bookworm root disk) and Debian 13
(the cached trixie tree, kernel and root disk, its standalone systemd-shutdown): build
the initrd and exitrd pair. The load at shutdown: `boots` times, boot the root, install
the exitrd, let its unit check it as at boot, power off through it, and read the
loader's own figure for the load from the console. Then one more boot runs the
installed loader `runs` times into scratch targets in four ways: as the shutdown runs
it after the check at boot (a copy only) and with no check recorded (a copy checked in
full), each with the page cache as it is and dropped first; also the check at boot
itself. (Those runs drop the page cache and fill /run: a shutdown after them says
little of one after a normal day, so the figure at shutdown comes from boots of their
own.) Medians, in ms, under QEMU TCG with one virtual CPU: run it on an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable (bench, bookend, harness).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tools import write_report
from harness.exitrdjob import install_exitrd_job, shutdown_through
from harness.guestjob import read_job_output
from harness.images import QEMU_VIRTIO_EXT4, build_image, content_by_bsdtar
from harness.newersystemd import TRIXIE, ensure_newer_system, standalone_shutdown
from harness.qemu import BootOptions, Disk, Kernel, installed_kernels
from harness.rootdisk import RootDisk, ensure_root_disk

BOOT_LIMIT = 900
LOADER = "/usr/lib/bookend/load-exitrd"
# Each way the loader runs, by name: the environment it runs with, and whether the page
# cache is dropped first.
WAYS = {
    "copy (checked at boot)": ("", False),
    "copy, cold cache": ("", True),
    "copy and full check": ("BOOKEND_EXITRD_CHECKED=/run/bench-none", False),
    "copy and full check, cold cache": ("BOOKEND_EXITRD_CHECKED=/run/bench-none", True),
    "check at boot": ("BOOKEND_EXITRD_CHECKED=/run/bench-checked", False),
}
AT_SHUTDOWN = re.compile(r"bookend: exitrd \w{64} .*?: (\d+) entries copied .*? in (\d+) ms")


@dataclass(frozen=True)
class Guest:
    name: str
    kernel: Kernel
    root: RootDisk
    build_args: tuple[str, ...]


def measure_script(runs: int) -> str:
    """The job's measuring part (bash, for a clock that costs no program run)."""
    lines = [
        "#!/bin/bash",
        "ms() { local e=$EPOCHREALTIME; echo $(((${e/./} - ${1/./}) / 1000)); }",
        f"for i in $(seq {runs}); do",
    ]
    for name, (env, cold) in WAYS.items():
        mode = " check" if name == "check at boot" else ""
        if not env and not mode:
            # A copy after the check at boot goes into the empty directory it made.
            lines.append("  mkdir -m 0700 /run/bench-target")
        if cold:
            lines.append("  sync; echo 3 > /proc/sys/vm/drop_caches")
        lines += [
            f"  t=$EPOCHREALTIME; {env} BOOKEND_EXITRD_TARGET=/run/bench-target {LOADER}{mode}"
            " > /dev/null 2>&1",
            f'  echo "{name}: $(ms $t)"',
            "  rm -rf /run/bench-target /run/bench-checked",
        ]
    lines.append("done > /job/out/load-times")
    return "\n".join(lines) + "\n"


def boot_through(guest: Guest, initrd: Path, job: Disk, work: Path) -> str:
    """Boot guest with the install job, power off through the exitrd: the console."""
    options = BootOptions(kernel=guest.kernel.path, initrd=initrd,
                          disks=(Disk(guest.root.image), job),
                          append=f"root=UUID={guest.root.uuid} rw", cpus=1, timeout=BOOT_LIMIT,
                          log_path=work / "console.log")  # fmt: skip
    return shutdown_through(options)


def load_at_shutdown(guest: Guest, images: Path, initrd: Path, work: Path) -> tuple[str, int]:
    """One boot that only installs the exitrd and powers off through it: the exitrd's
    entries and the loader's time at shutdown, in ms."""
    work.mkdir()
    text = boot_through(guest, initrd, install_exitrd_job(work / "job.img", images), work)
    loaded = AT_SHUTDOWN.search(text)
    assert loaded, f"no load at shutdown on the console; see {work / 'console.log'}"
    return loaded.group(1), int(loaded.group(2))


def loader_ways(guest: Guest, images: Path, initrd: Path, runs: int, work: Path) -> dict[str, str]:
    """One boot that runs the installed loader runs times in each way: the medians."""
    measure = work / "measure"
    measure.mkdir(parents=True)
    (measure / "run.sh").write_text(measure_script(runs))
    job = install_exitrd_job(work / "job.img", images, then="bash /job/measure/run.sh\n",
                             files={"measure": measure})  # fmt: skip
    boot_through(guest, initrd, job, work)
    times: dict[str, list[int]] = {}
    for line in read_job_output(job.path, "load-times", work / "out").read_text().splitlines():
        name, _, ms = line.rpartition(": ")
        times.setdefault(name, []).append(int(ms))
    return {name: f"{statistics.median(times[name]):.0f}" if name in times else "-"
            for name in WAYS}  # fmt: skip


def bench_guest(guest: Guest, boots: int, runs: int, work: Path) -> dict[str, str]:
    """guest's row: the exitrd, its load at shutdown in boots boots, the loader's ways."""
    images = work / guest.name / "images"
    images.mkdir(parents=True)
    initrd = build_image(images / "initrd.img", guest.kernel.version, *guest.build_args)
    tree = work / guest.name / "tree"
    tree.mkdir()
    unpacked = content_by_bsdtar(images / "exitrd.img", tree)
    loads = [load_at_shutdown(guest, images, initrd, work / guest.name / f"shutdown-{n}")
             for n in range(boots)]  # fmt: skip
    times = sorted(ms for _, ms in loads)
    row = {
        "exitrd": f"{loads[0][0]} entries, {unpacked / 1e6:.1f} MB",
        "at shutdown": f"{statistics.median(times):.0f} ({', '.join(map(str, times))})",
    }
    return row | loader_ways(guest, images, initrd, runs, work / guest.name / "ways")


def guests(which: list[str]) -> list[Guest]:
    chosen = []
    if "debian12" in which:
        kernel = installed_kernels()[-1]
        chosen.append(Guest("debian12", kernel, ensure_root_disk(), QEMU_VIRTIO_EXT4))
    if "debian13" in which:
        system = ensure_newer_system(TRIXIE)
        standalone = ("--exitrd-shutdown", str(standalone_shutdown(system)))
        args = ("--sysroot", str(system.tree), *QEMU_VIRTIO_EXT4, *standalone)
        chosen.append(Guest("debian13", system.kernel, system.root, args))
    return chosen


def report(rows: dict[str, dict[str, str]], boots: int, runs: int) -> str:
    columns = ["exitrd", "at shutdown", *WAYS]
    lines = [
        f"# Exitrd load time ({date.today().isoformat()})",
        "",
        f"`python3 bench/exitrdload.py --boots {boots} --runs {runs}`: QEMU TCG, one virtual",
        "CPU; the loader's times in ms. At shutdown: the loader's own figure from the",
        f"console, the median of {boots} power-offs (each in brackets), each after a boot",
        "that only installed and checked the exitrd. While running: the median of the runs",
        "in one more boot.",
        "",
        "| guest | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(row[c] for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3,
                        help="power-offs timed per guest (default 3)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="loader runs per way (default 5)")
    parser.add_argument("--guest", action="append", choices=["debian12", "debian13"],
                        help="the guests to measure (default both)")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="report file (default bench/results/DATE-exitrd-load.md)")  # fmt: skip
    parser.add_argument("--work", type=Path,
                        help="work directory, kept (images, console logs); default: a "
                             "temporary one")  # fmt: skip
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bookend-exitrdload-", dir="/var/tmp") as scratch:
        work = args.work or Path(scratch)
        for guest in guests(args.guest or ["debian12", "debian13"]):
            rows[guest.name] = bench_guest(guest, args.boots, args.runs, work)
        write_report(report(rows, args.boots, args.runs), args.out, "-exitrd-load", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
