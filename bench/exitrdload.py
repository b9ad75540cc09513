#!/usr/bin/env python3
"""What loading the installed exitrd costs, at shutdown and while running (issue 20).

    python3 bench/exitrdload.py [--runs 5] [--guest debian12|debian13] [--out FILE] [--work DIR]

For Debian 12 (this host's tree and kernel, the cached bookworm root disk) and Debian 13
(the cached trixie tree, kernel and root disk, its standalone systemd-shutdown): build
the initrd and exitrd pair, boot the root, install the exitrd (its unit checks it at
boot), then run the installed loader `runs` times into scratch targets in four ways:
as the shutdown runs it after the check at boot (a copy only) and with no check
recorded (a copy checked in full), each with the page cache as it is and dropped
first; also the check at boot itself. Then the machine powers off through the exitrd,
and the loader's own figure for that load is read from the console. Medians, in ms,
under QEMU TCG with one virtual CPU: run it on an otherwise idle machine.
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


def bench_guest(guest: Guest, runs: int, work: Path) -> dict[str, str]:
    """One boot of guest: the medians of each way, and the load at shutdown."""
    images = work / guest.name / "images"
    images.mkdir(parents=True)
    initrd = build_image(images / "initrd.img", guest.kernel.version, *guest.build_args)
    measure = work / guest.name / "measure"
    measure.mkdir()
    (measure / "run.sh").write_text(measure_script(runs))
    job = install_exitrd_job(work / guest.name / "job.img", images,
                             then="bash /job/measure/run.sh\n",
                             files={"measure": measure})  # fmt: skip
    options = BootOptions(kernel=guest.kernel.path, initrd=initrd,
                          disks=(Disk(guest.root.image), job),
                          append=f"root=UUID={guest.root.uuid} rw", cpus=1, timeout=BOOT_LIMIT,
                          log_path=work / guest.name / "console.log")  # fmt: skip
    text = shutdown_through(options)
    times: dict[str, list[int]] = {}
    out = read_job_output(job.path, "load-times", work / guest.name / "out").read_text()
    for line in out.splitlines():
        name, _, ms = line.rpartition(": ")
        times.setdefault(name, []).append(int(ms))
    tree = work / guest.name / "tree"
    tree.mkdir()
    unpacked = content_by_bsdtar(images / "exitrd.img", tree)
    loaded = AT_SHUTDOWN.search(text)
    row = {
        "exitrd": f"{loaded.group(1) if loaded else '?'} entries, {unpacked / 1e6:.1f} MB",
        "at shutdown": loaded.group(2) if loaded else "not loaded",
    }
    for name in WAYS:
        row[name] = f"{statistics.median(times[name]):.0f}" if name in times else "-"
    return row


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


def report(rows: dict[str, dict[str, str]], runs: int) -> str:
    columns = ["exitrd", "at shutdown", *WAYS]
    lines = [
        f"# Exitrd load time ({date.today().isoformat()})",
        "",
        f"`python3 bench/exitrdload.py --runs {runs}`: QEMU TCG, one virtual CPU; the",
        "loader's times in ms (while running: the median of the runs; at shutdown: the",
        "loader's own figure from the console, one power-off).",
        "",
        "| guest | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(row[c] for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
            rows[guest.name] = bench_guest(guest, args.runs, work)
        write_report(report(rows, args.runs), args.out, "-exitrd-load", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
