"""Faults at boot time: a root that never comes, one that comes late, a module that fails,
and the emergency shell that a failed boot ends in, locked unless configured.

The root device's timeout comes from the kernel command line: systemd-fstab-generator
takes `x-systemd.device-timeout=` out of `rootflags=` and gives it to the device unit
(systemd 252 has no command-line switch for the default device timeout, which is 90 s).

Four boots. The root disk, given to QEMU unplugged, is absent: emergency mode within the
device timeout, naming the device, in a locked shell whose Enter retries the boot (twice
refused again), until the disk, plugged in through QMP after the timeout, boots at the
next Enter. A disk plugged in while the initrd still waits boots, in the same boot as a
module that fails to load. The password and the unlocked shells each boot an image of
their own.

A shell is proven by what it prints, never by what we typed: the console echoes our
keystrokes when nothing reads them, so the command `printf '%s-%s\\n' SHELL word` is
answered by `SHELL-word`, a text the keystrokes themselves do not contain.
Run with `-rP` to see the measured times.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from harness.images import QEMU_VIRTIO_EXT4, build_image
from harness.qemu import Boot, BootOptions, Disk, Kernel, boot, plug_virtio_disk
from harness.qmp import Qmp
from harness.rootdisk import RootDisk
from harness.token import boot_to_token

BOOT_LIMIT = 420
# Seconds the initrd waits for the absent root; short, so each test stays short (the root
# is never there in time, so no host load makes it too short).
DEVICE_TIMEOUT = 5
# Under TCG on a busy host: from the timeout to emergency.target on the console.
EMERGENCY_SLACK = 60
# How long the late disk stays unplugged once the initrd waits for it.
LATE_SECONDS = 5
# sulogin sets up the terminal with TCSAFLUSH after printing its prompt, which throws
# away what was typed before: wait this long after a prompt before answering.
SETTLE = 2
# A module that fails at init: an int parameter given a word makes the kernel refuse it.
FAILING_MODULE = "dummy"
FAILING_OPTION = "dummy.numdummies=not-a-number"

EMERGENCY = r"Reached target .*emergency\.target"
LOCKED = r"Cannot open access to console, the root account is locked"
PASSWORD_PROMPT = r"Give root password for maintenance\n\(or press Control-D to continue\): "
PRESS_ENTER = r"Press Enter to continue\."
# systemd-sulogin-shell, once sulogin returns: the boot goes on towards default.target.
RESUMED = r"Starting default\.target"
UNLOCKED_PROMPT = r"Press Enter for maintenance\n\(or press Control-D to continue\): "


def faults_image(kernel: Kernel, directory: Path, *args: str) -> Path:
    return build_image(directory / "initrd.img", kernel.version, *QEMU_VIRTIO_EXT4,
                       "--no-exitrd", *args)  # fmt: skip


@pytest.fixture(scope="module")
def locked_initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faults_image(kernel, tmp_path_factory.mktemp("locked"))


def absent_root(absent_uuid: str) -> str:
    return f"root=UUID={absent_uuid} rw rootflags=x-systemd.device-timeout={DEVICE_TIMEOUT}s"


def boot_absent_root(root_boot: BootOptions, initrd: Path) -> Boot:
    """Boot with the real root disk attached but root= naming a UUID no disk has."""
    append = absent_root(str(uuid.uuid4()))
    return boot(replace(root_boot, initrd=initrd, append=append, timeout=BOOT_LIMIT))


def ask_shell_command(word: str) -> str:
    """A command a shell answers with a line the keystrokes do not contain."""
    return f"printf '%s-%s\\n' SHELL {word}"


def shell_answer(word: str) -> str:
    return f"SHELL-{word}"


def ask_shell(vm: Boot, word: str) -> str:
    """Type the command; return the answer a shell would print."""
    vm.send(ask_shell_command(word) + "\r")
    return shell_answer(word)


def answer_prompt(vm: Boot, prompt: str, text: str) -> None:
    vm.expect(prompt, timeout=120)
    time.sleep(SETTLE)
    vm.send(text + "\r")


def password_hash(password: str) -> str:
    salt = secrets.token_hex(8)
    made = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
                          input=password, capture_output=True, text=True, check=True)  # fmt: skip
    return made.stdout.strip()


def test_absent_root_ends_in_the_locked_shell_whose_enter_retries_then_boots_it_when_plugged(
    root_boot: BootOptions, root_disk: RootDisk, locked_initrd: Path, tmp_path: Path
) -> None:
    socket = tmp_path / "qmp.sock"
    append = f"{root_boot.append} rootflags=x-systemd.device-timeout={DEVICE_TIMEOUT}s"
    word = secrets.token_hex(8)
    waited = 0.0

    def absent_then_retried_then_plugged(vm: Boot) -> None:
        nonlocal waited
        with Qmp(socket) as qmp:
            vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
            started = vm.elapsed
            vm.expect(EMERGENCY, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
            waited = vm.elapsed - started
            # The console names the device: the status line is cut to the terminal's
            # width, but the boot's errors shown before the shell carry systemd's whole
            # message.
            vm.expect(rf"Timed out waiting for device .* - /dev/disk/by-uuid/{root_disk.uuid}\b",
                      timeout=60)  # fmt: skip
            vm.expect(LOCKED, timeout=60)
            answer_prompt(vm, PRESS_ENTER, "")
            # Enter resumes the boot (initrd.target once more), which fails the same way
            # and starts the emergency shell again. systemd prints no status lines once its
            # first transaction has finished, but sulogin speaks again.
            vm.expect(RESUMED, timeout=60)
            vm.expect(LOCKED, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
            answer_prompt(vm, PRESS_ENTER, ask_shell_command(word))
            # The command was only another Enter: the boot is retried and refused again.
            vm.expect(RESUMED, timeout=60)
            vm.expect(LOCKED, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
            assert shell_answer(word) not in vm.text
            vm.expect(PRESS_ENTER, timeout=60)
            # The disk comes after systemd gave up on it; the kernel names it when it is there.
            plug_virtio_disk(qmp, 0)
        vm.expect(r"virtio_blk virtio\d+: \[vd[a-z]\]", timeout=60)
        # Enter at the locked console retries once more, and now the root is there.
        vm.send("\r")
        vm.expect(RESUMED, timeout=60)

    booted = boot_to_token(late_root_boot(root_boot, locked_initrd, socket, append),
                           on_the_way=absent_then_retried_then_plugged)  # fmt: skip
    text = booted.text
    assert "Dependency failed for sysroot.mount - /sysroot." in text
    assert re.search(r"Dependency failed for .*Initrd Root File System\.", text)
    # systemd cannot give up before the timeout, since its job starts after the greeting.
    assert DEVICE_TIMEOUT <= waited <= DEVICE_TIMEOUT + EMERGENCY_SLACK
    # Each refused attempt waited for the device again: systemd's message, once per attempt.
    timeouts = set(re.findall(r"\[ *([\d.]+)\] .*Timed out waiting for device", text))
    assert len(timeouts) == 3, f"expected three refused attempts, saw {sorted(timeouts)}"
    print(f"absent root: emergency mode {waited:.0f} s after systemd started "
          f"(device timeout {DEVICE_TIMEOUT} s); booted once plugged, "
          f"{booted.seconds:.0f} s in all")  # fmt: skip


def test_password_emergency_shell_refuses_an_empty_password_and_opens_for_the_right_one(
    kernel: Kernel, root_boot: BootOptions, console_log: Path, tmp_path: Path
) -> None:
    password = secrets.token_hex(8)
    initrd = faults_image(kernel, tmp_path, "--emergency-shell", password_hash(password))
    refused, opened = secrets.token_hex(8), secrets.token_hex(8)
    with boot_absent_root(root_boot, initrd) as vm:
        vm.expect(EMERGENCY, timeout=300)
        answer_prompt(vm, PASSWORD_PROMPT, "")
        vm.expect(r"Login incorrect", timeout=60)
        # Typed at the password prompt, the command is only a wrong password.
        vm.expect(PASSWORD_PROMPT, timeout=60)
        time.sleep(SETTLE)
        not_run = ask_shell(vm, refused)
        vm.expect(r"Login incorrect", timeout=60)
        answer_prompt(vm, PASSWORD_PROMPT, password)
        vm.expect(r"\n# ", timeout=60)
        vm.expect(ask_shell(vm, opened), timeout=60)
        assert not_run not in vm.text
        vm.kill()
    assert "root account is locked" not in console_log.read_text(errors="replace")


def test_unlocked_emergency_shell_opens_without_a_password(
    kernel: Kernel, root_boot: BootOptions, tmp_path: Path
) -> None:
    initrd = faults_image(kernel, tmp_path, "--emergency-shell", "unlocked")
    word = secrets.token_hex(8)
    with boot_absent_root(root_boot, initrd) as vm:
        vm.expect(EMERGENCY, timeout=300)
        answer_prompt(vm, UNLOCKED_PROMPT, "")
        vm.expect(r"\n# ", timeout=60)
        vm.expect(ask_shell(vm, word), timeout=60)
        vm.kill()


def late_root_boot(root_boot: BootOptions, initrd: Path, socket: Path, append: str) -> BootOptions:
    """The root disk given to QEMU unplugged, to be plugged in through QMP at socket."""
    late = Disk(root_boot.attached[0].path, plugged=False)
    return replace(root_boot, initrd=initrd, disks=(late,), append=append, qmp_socket=socket,
                   timeout=BOOT_LIMIT)  # fmt: skip


def test_root_disk_plugged_in_late_is_waited_for_and_a_failing_module_does_not_hang_the_boot(
    kernel: Kernel, root_boot: BootOptions, root_disk: RootDisk, tmp_path: Path
) -> None:
    initrd = faults_image(kernel, tmp_path, "--add-module", FAILING_MODULE)
    socket = tmp_path / "qmp.sock"
    # kmod takes module options from the kernel command line as from modprobe.d; journald
    # forwards the initrd's log to the console, where systemd-modules-load's error shows.
    append = f"{root_boot.append} {FAILING_OPTION} rd.systemd.journald.forward_to_console=1"
    options = late_root_boot(root_boot, initrd, socket, append)
    plugged = 0.0

    def plug_in_late(vm: Boot) -> None:
        nonlocal plugged
        with Qmp(socket) as qmp:
            vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
            # systemd shows a start job that runs for a while: the initrd is waiting.
            vm.expect(r"Job dev-disk-by\\x2duuid-.*start running", timeout=120)
            time.sleep(LATE_SECONDS)
            plug_virtio_disk(qmp, 0)
        plugged = vm.elapsed
        # The status line is cut to the terminal's width; the UUID's tail survives.
        vm.expect(rf"Found device .*{root_disk.uuid[-12:]}", timeout=120)

    booted = boot_to_token(options, on_the_way=plug_in_late)
    text = booted.text
    assert "Timed out waiting for device" not in text
    # The module was refused, in the initrd, and its unit failed; nothing else did.
    assert re.search(rf"{FAILING_MODULE}: `not-a-number' invalid for parameter `numdummies'",
                     text), text[-3000:]  # fmt: skip
    assert f"Failed to insert module '{FAILING_MODULE}': Invalid argument" in text
    assert "Failed to start systemd-modules-load.service" in text
    # (The status line is cut to the terminal's width; the unit's description ends it.)
    others = [line for line in booted.failed_units if "Load Kernel Modules" not in line]
    assert not others, f"units failed; see {root_boot.log_path}"
    print(f"late root disk: plugged in {plugged:.0f} s into the boot, "
          f"token {booted.seconds - plugged:.0f} s later")  # fmt: skip
