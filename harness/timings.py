"""Where a test run's time went on making disks, told by every process of the run.

The run's controller (tests/conftest.py) names a file in BOOKEND_TEST_TIMINGS; each
process (the controller, pytest-xdist workers, a builder thread) appends one JSON line
per disk it needed: how long it took and whether it made the disk, waited for
another process making it, or found it cached. Without the variable nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TIMINGS_ENV = "BOOKEND_TEST_TIMINGS"


@dataclass(frozen=True)
class Timing:
    what: str  # e.g. "root disk"
    seconds: float
    how: str  # "made", "waited" or "cached"
    # The test that needed it ("" outside a test, e.g. in a thread making disks early).
    nodeid: str = ""


class Outcome:
    """What ensure_* found: set `how` once known (made, or waited for another maker)."""

    def __init__(self) -> None:
        self.how = "cached"


@contextmanager
def timed(what: str) -> Iterator[Outcome]:
    outcome = Outcome()
    started = time.monotonic()
    try:
        yield outcome
    finally:
        # pytest names the running test in the environment: "NODEID (setup)".
        current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        nodeid = current if threading.current_thread() is threading.main_thread() else ""
        record(Timing(what, time.monotonic() - started, outcome.how, nodeid))


def record(timing: Timing) -> None:
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return
    line = json.dumps(dataclasses.asdict(timing))
    # One short write in append mode: lines from several processes do not interleave.
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def read_timings(path: Path) -> list[Timing]:
    if not path.exists():
        return []
    timings = []
    for line in path.read_text(encoding="utf-8").splitlines():
        timings.append(Timing(**json.loads(line)))
    return timings
