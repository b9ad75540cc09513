"""What every test tier shares: this checkout first on the subprocesses' path, the tiers
(unit, image, vm: one mark each, by directory), the slow disks started early, and a
summary of where the run's time went. See harness/suite.py."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from harness.netroot import SCENARIOS_ENV, read_scenarios, scenario_lines
from harness.suite import (
    EarlyBuilds,
    Phase,
    disk_needs,
    run_order,
    start_early_builds,
    tier_of,
    time_summary,
)
from harness.timings import TIMINGS_ENV, read_timings

# The tests run `python -m bookend` in subprocesses, often from another directory: put
# this checkout first on their path, or they would import whichever bookend is
# installed (pip's editable install points at one worktree only).
CHECKOUT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item.nodeid)))
    # Stable, and the same in every xdist worker, as xdist requires.
    items.sort(key=lambda item: run_order(item.nodeid))


def pytest_configure(config: pytest.Config) -> None:
    # Only the run's controller: the one process without xdist, or xdist's controller.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunSummary(config), "bookend-run-summary")


class RunSummary:
    """Starts the slow disks early, and sums up the phases every test reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.phases: list[Phase] = []
        self.builds: EarlyBuilds | None = None
        # The workers inherit the environment, so they all write to this one file.
        handle, name = tempfile.mkstemp(prefix="bookend-test-timings-", suffix=".jsonl")
        os.close(handle)
        self.timings = Path(name)
        os.environ[TIMINGS_ENV] = name
        handle, name = tempfile.mkstemp(prefix="bookend-test-scenarios-", suffix=".jsonl")
        os.close(handle)
        self.scenarios = Path(name)
        os.environ[SCENARIOS_ENV] = name

    def start_builds(self, nodeids: list[str]) -> None:
        needs = disk_needs(nodeids)
        if self.builds is None and needs.any and not self.config.option.collectonly:
            self.builds = start_early_builds(needs)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # Without xdist this process collects; with it, the workers do (next hook).
        self.start_builds([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.start_builds(ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.append(Phase(report.nodeid, report.start, report.stop, report.duration))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.config.option.collectonly:
            return
        if self.builds is not None:
            # Never leave a maker guest running behind the run.
            self.builds.wait()
        wall = time.monotonic() - self.started
        lines = time_summary(self.phases, read_timings(self.timings), wall)
        if self.builds is not None:
            lines += [f"early disk build failed: {error}" for error in self.builds.errors]
        terminalreporter.write_sep("-", "where the time went")
        for line in lines:
            terminalreporter.write_line(line)
        scenarios = scenario_lines(read_scenarios(self.scenarios))
        if scenarios:
            terminalreporter.write_sep("-", "recorded boots: time to switch root, image sizes")
            for line in scenarios:
                terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        self.timings.unlink(missing_ok=True)
        self.scenarios.unlink(missing_ok=True)
