"""What a boot-test's console says: passed or why not, the phases, the initrd's units,
and the shutdown through the exitrd. Pure text in, data out (tested on recorded consoles).

Times are seconds since the kernel started: the kernel's console lines carry them
(printk.time=1), the journal lines the root dumps carry the same clock
(short-monotonic), and the root's script prints /proc/uptime at its marks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bookend.boottest.guest import MARK

# "[   12.345678] text" on the console (kernel lines) and in the journal's dump.
# Terminal control a line may start with: systemd 257 resets the console's palette
# (OSC 104, "ESC ] 104 BEL") before it prints, and the console may have lost the ESC ].
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|^[0-9;]*\x07")
_STAMPED = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
_JOURNAL = re.compile(rf"^{MARK}-J \[\s*(\d+\.\d+)\] \S+ systemd\[1\]: (.*)$")
_CONSOLE_SYSTEMD = re.compile(r"^\[\s*(\d+\.\d+)\] systemd\[1\]: (.*)$")
RUN_INIT = re.compile(r"Run \S+ as init process")
SWITCHING = "Switching root."
# The initrd's status lines on the console as it hands over (the journal is not there).
SWITCHED = re.compile(r"Switching root|Starting .*Switch Root|Reached target .*Switch Root")
PIVOT = re.compile(r"Returning to initrd\.\.\.|Entering exitrd\.\.\.")
POWER_DOWN = "reboot: Power down"
# What systemd-shutdown (the exitrd's is "shutdown[1]") and bookend's hooks say they did.
_DETACHED = re.compile(
    r"shutdown\[1\]: (?:Detaching |Stopping |All \S+ (?:devices )?(?:detached|unmounted|stopped))"
    r"|Unmounting '/oldroot'\.|Detaching DM /|Stopping MD /|bookend: "
)
_UNFINISHED = "Unable to finalize remaining"
# Lines that end a boot early, and what to call them.
EMERGENCY = re.compile(
    r"You are in emergency mode|Entering emergency mode|Started emergency\.service"
    r"|Cannot open access to console, the root account is locked"
)
PANIC = re.compile(r"Kernel panic - not syncing: .*")
_CAUSE = re.compile(
    r"(unknown filesystem type .*|Failed to mount .*|Dependency failed for .*"
    r"|Timed out waiting for device .*|Failed to start .*|wrong fs type.*|No such device.*)"
)
_STARTS = re.compile(r"^(?:Starting|Mounting|Activating swap) (.*?)(?:\.\.\.)?$")
_ENDS = re.compile(
    r"^(?:Started|Finished|Mounted|Failed to start|Failed to mount|Activated swap) (.*?)\.?$"
)


@dataclass(frozen=True)
class Unit:
    name: str  # as systemd's status line says it (the description)
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Phases:
    """Seconds since the kernel's start at which each phase ended (None: not reached)."""

    init: float | None = None  # the kernel ran the initrd's /init
    switch_root: float | None = None  # the initrd handed over to the root
    root_reached: float | None = None  # the root's default target was active
    poweroff: float | None = None  # the root began to power off
    exitrd: float | None = None  # the first line after the pivot into the exitrd
    power_down: float | None = None  # the kernel powered the machine off


@dataclass(frozen=True)
class Report:
    passed: bool
    reasons: tuple[str, ...]
    phases: Phases
    default_target: str | None
    initrd_units: tuple[Unit, ...]
    root_units: tuple[Unit, ...]
    failed_units: tuple[str, ...]
    through_exitrd: bool
    exitrd_lines: tuple[str, ...]  # what the exitrd's systemd-shutdown detached
    extra: dict[str, Any] = field(default_factory=dict)  # kernel, image, accel, seconds

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["slowest_initrd_units"] = [asdict(u) for u in slowest(self.initrd_units)]
        return data


def slowest(units: tuple[Unit, ...], count: int = 5) -> list[Unit]:
    return sorted(units, key=lambda u: -u.seconds)[:count]


def _stamped(lines: list[str], wanted: re.Pattern[str] | str) -> float | None:
    for line in lines:
        match = _STAMPED.match(line)
        if match and (
            wanted in match.group(2) if isinstance(wanted, str) else wanted.search(match.group(2))
        ):
            return float(match.group(1))
    return None


def _units(journal: list[tuple[float, str]]) -> list[Unit]:
    """Units by their "Starting X..." and "Started X." lines (also Finished, Mounted, and
    the failures), in the order they started."""
    begun: dict[str, float] = {}
    done: list[Unit] = []
    for when, text in journal:
        start = _STARTS.match(text)
        if start:
            begun.setdefault(start.group(1), when)
            continue
        end = _ENDS.match(text)
        if end and end.group(1) in begun:
            # "unit.service - Description" (systemd >= 252 names the unit): the name.
            name = end.group(1).split(" - ", 1)[0]
            done.append(Unit(name, begun.pop(end.group(1)), when))
    return sorted(done, key=lambda u: u.start)


def _journal(lines: list[str]) -> list[tuple[float, str]]:
    """systemd's messages with their times, in time order: the root's dump of the journal,
    and the console's kernel lines, where the initrd's systemd logs until its journald
    runs (the journal has those only as kernel messages). A message in both is paired
    once: a unit's first start and first end count."""
    found = []
    for line in lines:
        match = _JOURNAL.match(line) or _CONSOLE_SYSTEMD.match(line)
        if match:
            found.append((float(match.group(1)), match.group(2)))
    return sorted(found, key=lambda item: item[0])


def _mark(lines: list[str], token: str, word: str) -> list[str] | None:
    prefix = f"{MARK} {token} {word}"
    for line in lines:
        if line.startswith(prefix + " ") or line == prefix:
            return line[len(prefix) :].split()
    return None


def parse(console: str, token: str, qemu_status: int | None, expect_exitrd: bool) -> Report:
    """The report of a finished boot; qemu_status None: QEMU was stopped (time limit)."""
    lines = [_CONTROL.sub("", line.strip()).strip() for line in console.splitlines()]
    journal = _journal(lines)
    switch = next((when for when, text in journal if text == SWITCHING), None)
    reached = _mark(lines, token, "reached")
    failed_target = _mark(lines, token, "failed")
    poweroff = _mark(lines, token, "poweroff")
    pivot_at = next((i for i, line in enumerate(lines) if PIVOT.search(line)), None)
    exitrd_at = _stamped(lines[pivot_at + 1 :], "") if pivot_at is not None else None
    phases = Phases(
        init=_stamped(lines, RUN_INIT),
        switch_root=switch,
        root_reached=float(reached[1]) if reached else None,
        poweroff=float(poweroff[0]) if poweroff else None,
        exitrd=exitrd_at,
        power_down=_stamped(lines, POWER_DOWN),
    )
    units = _units(journal)
    after = lines[pivot_at + 1 :] if pivot_at is not None else []
    detached = tuple(_strip(line) for line in after if _DETACHED.search(line))
    said = reached or failed_target
    target = said[0] if said else None
    failed_units = tuple(
        (_mark([line], token, "failed-unit") or [""])[0]
        for line in lines
        if line.startswith(f"{MARK} {token} failed-unit ")
    )
    reasons = _reasons(lines, token, phases, qemu_status, pivot_at is not None, expect_exitrd)
    reasons += [f"the root's default target {target} failed"] if failed_target else []
    return Report(
        passed=not reasons,
        reasons=tuple(reasons),
        phases=phases,
        default_target=target,
        initrd_units=tuple(u for u in units if switch is None or u.start < switch),
        root_units=tuple(u for u in units if switch is not None and u.start >= switch),
        failed_units=failed_units,
        through_exitrd=pivot_at is not None,
        exitrd_lines=detached,
    )


def _strip(line: str) -> str:
    match = _STAMPED.match(line)
    return match.group(2) if match else line


def _reasons(
    lines: list[str],
    token: str,
    phases: Phases,
    qemu_status: int | None,
    pivoted: bool,
    expect_exitrd: bool,
) -> list[str]:
    """Why the boot did not pass, first cause first; empty when it passed."""
    reasons: list[str] = []
    if phases.root_reached is None:
        reasons.append(why_not_reached(lines, token, phases))
        return reasons
    if qemu_status is None:
        reasons.append("the guest did not power off within the time limit")
    elif qemu_status != 0 or phases.power_down is None:
        reasons.append(f"the shutdown did not end in a power-off (QEMU's status {qemu_status})")
    if any(_UNFINISHED in line for line in lines):
        reasons.append("the shutdown left file systems or devices it could not detach")
    if expect_exitrd and not pivoted:
        reasons.append("the shutdown did not go through the exitrd")
    return reasons


def why_not_reached(lines: list[str], token: str, phases: Phases) -> str:
    """One line on why the root's default target was never reported active."""
    causes = [m.group(1) for line in lines if (m := _CAUSE.search(line))]
    cause = f" ({'; '.join(dict.fromkeys(causes[:3]))})" if causes else ""
    panic = next((m.group(0) for line in lines if (m := PANIC.search(line))), None)
    if panic:
        return f"the kernel panicked: {panic}{cause}"
    emergency = any(EMERGENCY.search(line) for line in lines)
    if phases.init is None:
        return f"the kernel never ran the initrd's /init{cause}"
    if not any(SWITCHED.search(line) for line in lines) and phases.switch_root is None:
        where = "entered emergency mode" if emergency else "never switched to the root"
        return f"the initrd {where}{cause}"
    if emergency:
        return f"the root entered emergency mode instead of its default target{cause}"
    if _mark(lines, token, "starting") is None:
        return f"the root never ran the boot-test's command (systemd.run=){cause}"
    return f"the root never reached its default target{cause}"


def phase_spans(phases: Phases) -> list[tuple[str, float, float]]:
    """(name, start, end) of each phase the boot got through, in order."""
    marks = [
        ("kernel", 0.0, phases.init),
        ("initrd", phases.init, phases.switch_root),
        ("root", phases.switch_root, phases.root_reached),
        ("root's shutdown", phases.poweroff, phases.exitrd or phases.power_down),
        ("exitrd", phases.exitrd, phases.power_down),
    ]
    return [(name, start, end) for name, start, end in marks if start is not None and end]


def summary(report: Report) -> str:
    """The human summary: the verdict and why, the phases, the initrd's slowest units,
    and the shutdown."""
    extra = report.extra
    lines = ["boot-test: PASSED" if report.passed else "boot-test: FAILED"]
    lines += [f"  why: {reason}" for reason in report.reasons]
    if extra:
        lines.append(f"  kernel {extra.get('kernel')}, image {extra.get('image')}, "
                     f"{extra.get('accel')}, {extra.get('seconds')} s in all")  # fmt: skip
    spans = phase_spans(report.phases)
    if spans:
        lines.append("  phases: " + ", ".join(f"{n} {e - s:.1f} s" for n, s, e in spans))
    if report.default_target:
        lines.append(f"  root's default target: {report.default_target}")
    if report.initrd_units:
        lines.append("  slowest units in the initrd:")
        lines += [f"    {u.seconds:6.2f} s  {u.name}" for u in slowest(report.initrd_units)]
    if report.failed_units:
        lines.append("  failed units in the root: " + ", ".join(report.failed_units))
    if report.through_exitrd:
        lines.append("  shutdown: through the exitrd, which said:")
        lines += [f"    {line}" for line in report.exitrd_lines] or ["    (nothing)"]
    elif report.phases.power_down is not None:
        lines.append("  shutdown: powered off without an exitrd")
    if extra.get("shared_root"):
        lines.append(f"  root: {extra['shared_root']}, shared read-only, writes kept in RAM")
    if extra.get("console_log"):
        lines.append(f"  console: {extra['console_log']}")
    return "\n".join(lines)
