"""Boot splash (feature plymouth): with `splash` on the command line plymouth asks for the
LUKS passphrase on the display, the passphrase typed on the emulated keyboard opens the
root, and no plymouthd of the initrd outlives switch-root into a root without plymouth.
Without `splash` the same image asks on the text console.

The image is generic with the spinner theme (the build machine's own default, Debian's
"emerald", is not installed, so the image would fall back to text). The screenshots
stay in the test's tmp_path (pytest keeps the last runs'); `-rP` prints where.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bookend.features import plymouth
from harness.guestjob import make_job_disk, read_job_output, run_job
from harness.images import build_image
from harness.keys import type_text
from harness.qemu import Boot, BootOptions, Disk, Kernel
from harness.qmp import Qmp
from harness.screen import screendump
from harness.stackdisks import StackDisks
from harness.token import boot_to_token
from tests.pngfile import read_png

PROMPT = r"Please enter passphrase for disk"
# systemd starts the agent when a question appears; it hands the question to plymouthd.
# (While plymouthd runs it holds the console's output, so the serial console only
# shows this line in a boot without the splash, where it must not appear.)
AGENT_STARTED = r"Started systemd-ask-password-plymouth\.service"
INITRD_STARTED = r"Welcome to .*\(bookend initrd\)"
# plymouthd shows only details (text) while a serial console is among console=; the
# harness always gives console=ttyS0, so the test asks plymouth to leave it aside.
SPLASH_ARGS = "splash plymouth.ignore-serial-consoles"
DISPLAY = ("-vga", "std")
THEME = "spinner"
# The spinner theme's entry.png: a dark field in a blue frame.
ENTRY_FIELD = b"\x36\x3a\x3d"
ENTRY_FRAME = b"\x1b\x6a\xcb"
BULLET = b"\xee\xee\xec"  # bullet.png, one per character typed
SCREEN_LIMIT = 300  # seconds from systemd's start to plymouth's prompt, under emulation

# Runs in the real root: which processes are left after switch-root, and the boot's
# journal, the initrd's part included (it stays in /run, under the initrd's machine ID,
# hence --merge, which journalctl 252 will not combine with --boot).
PROCESSES_JOB = """\
#!/bin/sh
for comm in /proc/[0-9]*/comm; do
    read -r name < "$comm" && echo "$name"
done > /job/out/processes
boot=$(tr -d - < /proc/sys/kernel/random/boot_id)
journalctl --merge --no-pager -o short-monotonic "_BOOT_ID=$boot" > /job/out/journal 2>&1
"""
# In the journal: the console's agent standing aside for plymouth's, and bookend's unit
# that ends plymouthd before switch-root.
CONSOLE_AGENT_SKIPPED = (
    r"systemd-ask-password-console\.path .* skipped because of an unmet condition check "
    r"\(ConditionPathExists=!/run/plymouth/pid\)"
)
QUIT_FINISHED = rf"Finished {re.escape(plymouth.QUIT_UNIT)}"


def luks_args(stack: StackDisks) -> str:
    assert stack.luks_uuid and stack.luks_name
    return f"root=UUID={stack.root_uuid} rd.luks.name={stack.luks_uuid}={stack.luks_name} rw"


@pytest.fixture(scope="module")
def splash_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("splash") / "initrd.img"
    return build_image(output, kernel.version, "--generic", "--splash", "--splash-theme", THEME)


def colours(png: Path) -> collections.Counter[bytes]:
    _, _, rows = read_png(png.read_bytes())
    return collections.Counter(row[i : i + 3] for row in rows for i in range(0, len(row), 3))


def shows_entry(counts: collections.Counter[bytes]) -> bool:
    """The password entry of the theme is on the screen (it is 305x34 pixels, mostly
    field, framed in blue)."""
    return counts[ENTRY_FIELD] > 3000 and counts[ENTRY_FRAME] > 500


def wait_for_screen(qmp: Qmp, path: Path, timeout: float) -> collections.Counter[bytes]:
    """Screenshots into path until the prompt is drawn; its colours."""
    deadline = time.monotonic() + timeout
    while True:
        counts = colours(screendump(qmp, path))
        if shows_entry(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(3)


def splash_boot(
    options: BootOptions, stack: StackDisks, initrd: Path, tmp_path: Path
) -> BootOptions:
    return replace(options, initrd=initrd, disks=(Disk(stack.disks[0]),),
                   append=luks_args(stack), devices=DISPLAY,
                   qmp_socket=tmp_path / "qmp.sock")  # fmt: skip


@dataclass
class Screens:
    """The screenshots of a splash boot and their colours."""

    directory: Path
    counts: dict[str, collections.Counter[bytes]] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.directory / f"splash-{name}.png"


def type_into_the_splash(vm: Boot, qmp_socket: Path, passphrase: str, screens: Screens) -> None:
    """Wait for plymouth's prompt on the screen, type the passphrase on the keyboard (a
    screenshot before Enter), then Enter."""
    vm.expect(INITRD_STARTED, timeout=300)
    with Qmp(qmp_socket) as qmp:
        screens.counts["prompt"] = wait_for_screen(qmp, screens.path("prompt"), SCREEN_LIMIT)
        assert shows_entry(screens.counts["prompt"]), f"no entry on {screens.path('prompt')}"
        type_text(qmp, passphrase)
        time.sleep(5)  # a frame or two under emulation
        screens.counts["typed"] = colours(screendump(qmp, screens.path("typed")))
        type_text(qmp, "\n")
    # Each key press drew a bullet in the entry: plymouth had the keyboard.
    assert screens.counts["typed"][BULLET] > screens.counts["prompt"][BULLET] + 20


def splash_job_boot(
    root_boot: BootOptions, stack: StackDisks, initrd: Path, tmp_path: Path, more: str = ""
) -> tuple[BootOptions, Disk]:
    """A boot of the LUKS root with the splash and the job that lists the processes."""
    job = make_job_disk(tmp_path / "job.img", PROCESSES_JOB)
    options = splash_boot(root_boot, stack, initrd, tmp_path)
    append = f"{options.append} {SPLASH_ARGS} {more}".strip()
    return replace(options, disks=(*options.disks, job), append=append), job


def processes_left(job: Disk, tmp_path: Path) -> list[str]:
    names = read_job_output(job.path, "processes", tmp_path / "processes").read_text().split()
    assert "systemd" in names, f"no process list from the real root: {names}"
    return names


def test_passphrase_typed_into_the_splash(
    root_boot: BootOptions, stacks: dict[str, StackDisks], splash_initrd: Path, tmp_path: Path
) -> None:
    stack = stacks["luks"]
    assert stack.passphrase
    options, job = splash_job_boot(root_boot, stack, splash_initrd, tmp_path)
    screens = Screens(tmp_path)

    def answer(vm: Boot) -> None:
        assert options.qmp_socket is not None
        type_into_the_splash(vm, options.qmp_socket, stack.passphrase or "", screens)

    done = run_job(options, on_the_way=answer)
    print(f"splash screenshots: {screens.path('prompt')}, {screens.path('typed')}; "
          f"boot {done.seconds:.0f} s")  # fmt: skip
    assert done.status == 0, done.why_failed(options.log_path)
    assert "plymouthd" not in processes_left(job, tmp_path), "plymouthd outlived switch-root"
    # The splash was ended before switch-root by bookend's unit (the root has no plymouth;
    # its systemd would otherwise end it later, stopping the orphaned plymouth-start).
    journal = read_job_output(job.path, "journal", tmp_path / "journal").read_text()
    assert re.search(QUIT_FINISHED, journal), f"{plymouth.QUIT_UNIT} did not run; see {tmp_path}"
    # plymouth's agent took the question; the console's stood aside for it.
    assert re.search(AGENT_STARTED, journal)
    assert re.search(CONSOLE_AGENT_SKIPPED, journal)


def test_without_splash_the_console_asks(
    root_boot: BootOptions,
    stacks: dict[str, StackDisks],
    splash_initrd: Path,
    tmp_path: Path,
) -> None:
    stack = stacks["luks"]
    assert stack.passphrase
    options = splash_boot(root_boot, stack, splash_initrd, tmp_path)
    console_png = tmp_path / "console-prompt.png"

    def answer_on_the_console(vm: Boot) -> None:
        vm.expect(PROMPT, timeout=300)
        assert options.qmp_socket is not None
        with Qmp(options.qmp_socket) as qmp:
            assert not shows_entry(colours(screendump(qmp, console_png)))
        vm.send(f"{stack.passphrase}\n")

    booted = boot_to_token(options, on_the_way=answer_on_the_console)
    print(f"console screenshot: {console_png}; boot {booted.seconds:.0f} s")
    assert not re.search(AGENT_STARTED, booted.text), "plymouth asked without splash"
