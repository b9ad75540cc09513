"""The exitrd's exit-status hook (harness/exitstatus.py), run on this host with files in
place of PID 1's command line, the console and QEMU's port: where it finds the status,
which verbs it acts on, and systemd 262's empty verb."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.exitstatus import (
    HOOK_DIR,
    compile_hook,
    console_line,
    exit_hook_extension,
    pass_status_job,
    qemu_status,
)

PORT_OFFSET = 0x501
# The hook's bound on waiting for its sibling hooks, here: far above a run that does not wait.
SIBLINGS_SECONDS = 3


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hook")
    defines = [f'{name}="{base / file}"' for name, file in (
        ("PID1_CMDLINE", "cmdline"), ("LEFT_BY_THE_ROOT", "exit-status"),
        ("KMSG", "kmsg"), ("PORT", "port"), ("PROC", "proc"))]  # fmt: skip
    (base / "proc").mkdir()
    return compile_hook(
        base / "hook", *defines, "SETTLE_SECONDS=0", f"SIBLINGS_SECONDS={SIBLINGS_SECONDS}"
    )


def run_hook(hook: Path, verb: str, pid1: list[str], left: str | None = None) -> tuple[int, str]:
    """Run the hook with verb as its argument and PID 1's argv pid1; the byte it wrote
    to the port (-1: none) and what it printed."""
    base = hook.parent
    for name in ("exit-status", "kmsg", "port"):
        (base / name).unlink(missing_ok=True)
    (base / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in pid1))
    if left is not None:
        (base / "exit-status").write_text(left)
    (base / "port").write_bytes(bytes(PORT_OFFSET + 1))
    (base / "kmsg").write_text("")
    subprocess.run([str(hook), verb], check=True)
    port = (base / "port").read_bytes()
    written = port[PORT_OFFSET] if port != bytes(PORT_OFFSET + 1) else -1
    return written, (base / "kmsg").read_text()


SHUTDOWN = ["/shutdown", "poweroff", "--timeout=90000000us", "--log-target=console"]


def test_the_exit_code_systemd_passes_on_becomes_one_more(hook: Path) -> None:
    written, printed = run_hook(hook, "exit", [*SHUTDOWN[:1], "exit", "--exit-code=88"])
    assert written == 89
    assert printed == console_line(88) + "\n"


def test_systemd_262s_empty_verb_is_taken_from_pid_1(hook: Path) -> None:
    # Debian testing's systemd-shutdown 262 runs its hooks with "" as the verb.
    assert run_hook(hook, "", [*SHUTDOWN, "--exit-code=42"])[0] == 43
    reboot = ["/shutdown", "reboot", "--exit-code=42"]
    assert run_hook(hook, "", reboot) == (-1, "")


def test_the_status_the_root_left_when_systemd_passes_none_on(hook: Path) -> None:
    assert run_hook(hook, "poweroff", SHUTDOWN, left="7\n")[0] == 8
    # --exit-code=0 (every power-off from systemd >= 254) does not hide the file.
    assert run_hook(hook, "poweroff", [*SHUTDOWN, "--exit-code=0"], left="7\n")[0] == 8


def test_nothing_without_a_status_or_on_reboot_and_kexec(hook: Path) -> None:
    assert run_hook(hook, "poweroff", SHUTDOWN) == (-1, "")
    assert run_hook(hook, "poweroff", SHUTDOWN, left="255\n") == (-1, "")
    for verb in ("reboot", "kexec", "halt"):
        assert run_hook(hook, verb, [*SHUTDOWN, "--exit-code=5"], left="5") == (-1, "")


@contextmanager
def sibling_hook(hook: Path, pid: int, state: str) -> Iterator[None]:
    """Another child of the hook's parent (this process) in the hook's /proc, in state
    S (a hook still running) or Z (one that ended, not yet reaped by systemd)."""
    sibling = hook.parent / f"proc/{pid}"
    sibling.mkdir()
    (sibling / "stat").write_text(f"{pid} (bookend-holde) {state} {os.getpid()} 1 1 0 -1\n")
    try:
        yield
    finally:
        (sibling / "stat").unlink()
        sibling.rmdir()


def seconds_to_exit_3(hook: Path) -> float:
    """Run the hook for `exit 3`, check it made 4 of it, and return how long it took."""
    started = time.monotonic()
    assert run_hook(hook, "exit", ["/shutdown", "exit", "--exit-code=3"])[0] == 4
    return time.monotonic() - started


def test_waits_for_the_other_hooks_within_its_bound(hook: Path) -> None:
    with sibling_hook(hook, 999999, "S"):
        assert SIBLINGS_SECONDS - 0.1 <= seconds_to_exit_3(hook) < SIBLINGS_SECONDS + 5
    assert seconds_to_exit_3(hook) < SIBLINGS_SECONDS - 0.1


def test_a_hook_that_ended_is_not_waited_for(hook: Path) -> None:
    # systemd reaps the hooks one by one: one that ended may stay a zombie until this one
    # ends. Waiting for it would take the whole bound on every power-off.
    with sibling_hook(hook, 999998, "Z"):
        assert seconds_to_exit_3(hook) < SIBLINGS_SECONDS - 0.1


def test_qemu_status_and_the_root_side_hook(tmp_path: Path) -> None:
    assert qemu_status(123) == 249
    with pytest.raises(ValueError):
        qemu_status(255)
    job = pass_status_job(17)
    assert f"/{HOOK_DIR}/bookend-pass-status" in job and "echo 17 >" in job
    tree = exit_hook_extension(tmp_path)
    assert (tree / HOOK_DIR / "bookend-exit-status").stat().st_mode & 0o111
    release = tree / "usr/lib/extension-release.d/extension-release.bookend-exit-status"
    assert "SYSEXT_SCOPE=initrd" in release.read_text()
