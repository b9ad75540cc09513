"""Faults at boot time: a root that never comes, one that comes late, a module that fails,
and the emergency shell that a failed boot ends in, locked unless configured.

The root device's timeout comes from the kernel command line: systemd-fstab-generator
takes `x-systemd.device-timeout=` out of `rootflags=` and gives it to the device unit
(systemd 252 has no command-line switch for the default device timeout, which is 90 s).

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
# Seconds the initrd waits for the absent root; short, so each test stays short.
DEVICE_TIMEOUT = 10
# Under TCG on a busy host: from the timeout to emergency.target on the console.
EMERGENCY_SLACK = 60
# How long the late disk stays unplugged once the initrd waits for it.
LATE_SECONDS = 15
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


def test_absent_root_reaches_emergency_mode_within_the_device_timeout(
    root_boot: BootOptions, locked_initrd: Path, console_log: Path
) -> None:
    absent_uuid = str(uuid.uuid4())
    options = replace(root_boot, initrd=locked_initrd, append=absent_root(absent_uuid),
                      timeout=BOOT_LIMIT)  # fmt: skip
    with boot(options) as vm:
        vm.expect(r"Welcome to .*\(bookend initrd\)", timeout=240)
        started = vm.elapsed
        vm.expect(EMERGENCY, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
        waited = vm.elapsed - started
        # The console names the device: the status line is cut to the terminal's width,
        # but the boot's errors shown before the shell carry systemd's whole message.
        vm.expect(rf"Timed out waiting for device .* - /dev/disk/by-uuid/{absent_uuid}\b",
                  timeout=60)  # fmt: skip
        vm.expect(LOCKED, timeout=60)
        vm.kill()
    text = console_log.read_text(errors="replace")
    assert "Dependency failed for sysroot.mount - /sysroot." in text
    assert re.search(r"Dependency failed for .*Initrd Root File System\.", text)
    # systemd cannot give up before the timeout, since its job starts after the greeting.
    assert DEVICE_TIMEOUT <= waited <= DEVICE_TIMEOUT + EMERGENCY_SLACK
    print(f"absent root: emergency mode {waited:.0f} s after systemd started "
          f"(device timeout {DEVICE_TIMEOUT} s)")  # fmt: skip


def test_locked_emergency_shell_gives_no_shell_and_enter_retries_the_boot(
    root_boot: BootOptions, locked_initrd: Path, console_log: Path
) -> None:
    word = secrets.token_hex(8)
    with boot_absent_root(root_boot, locked_initrd) as vm:
        vm.expect(EMERGENCY, timeout=300)
        vm.expect(LOCKED, timeout=60)
        answer_prompt(vm, PRESS_ENTER, "")
        # Enter resumes the boot (initrd.target once more), which fails the same way and
        # starts the emergency shell again. systemd prints no status lines once its first
        # transaction has finished, but sulogin speaks again.
        vm.expect(RESUMED, timeout=60)
        vm.expect(LOCKED, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
        answer_prompt(vm, PRESS_ENTER, ask_shell_command(word))
        # The command was only another Enter: the boot is retried and refused again.
        vm.expect(RESUMED, timeout=60)
        vm.expect(LOCKED, timeout=DEVICE_TIMEOUT + EMERGENCY_SLACK)
        assert shell_answer(word) not in vm.text
        vm.kill()
    # Each retry waited for the device again: systemd's message, once per attempt.
    text = console_log.read_text(errors="replace")
    timeouts = set(re.findall(r"\[ *([\d.]+)\] .*Timed out waiting for device", text))
    assert len(timeouts) == 3, f"expected three attempts, saw {sorted(timeouts)}"


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


def test_root_disk_plugged_in_late_is_waited_for(
    root_boot: BootOptions, root_disk: RootDisk, locked_initrd: Path, tmp_path: Path
) -> None:
    socket = tmp_path / "qmp.sock"
    options = late_root_boot(root_boot, locked_initrd, socket, root_boot.append)
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
    assert "Timed out waiting for device" not in booted.text
    assert not booted.failed_units, f"units failed; see {root_boot.log_path}"
    print(f"late root disk: plugged in {plugged:.0f} s into the boot, "
          f"token {booted.seconds - plugged:.0f} s later")  # fmt: skip


def test_module_that_fails_to_load_does_not_hang_the_boot(
    kernel: Kernel, root_boot: BootOptions, tmp_path: Path
) -> None:
    initrd = faults_image(kernel, tmp_path, "--add-module", FAILING_MODULE)
    # kmod takes module options from the kernel command line as from modprobe.d; journald
    # forwards the initrd's log to the console, where systemd-modules-load's error shows.
    append = f"{root_boot.append} {FAILING_OPTION} rd.systemd.journald.forward_to_console=1"

    def module_fails(vm: Boot) -> None:
        vm.expect(rf"{FAILING_MODULE}: `not-a-number' invalid for parameter `numdummies'",
                  timeout=240)  # fmt: skip
        vm.expect(rf"Failed to insert module '{FAILING_MODULE}': Invalid argument", timeout=60)

    booted = boot_to_token(replace(root_boot, initrd=initrd, append=append, timeout=BOOT_LIMIT),
                           on_the_way=module_fails)  # fmt: skip
    assert "Failed to start systemd-modules-load.service" in booted.text
    print(f"failing module: boot to token in {booted.seconds:.0f} s")


def test_enter_at_the_locked_console_boots_a_root_disk_that_came_after_the_timeout(
    root_boot: BootOptions, locked_initrd: Path, tmp_path: Path
) -> None:
    socket = tmp_path / "qmp.sock"
    append = f"{root_boot.append} rootflags=x-systemd.device-timeout={DEVICE_TIMEOUT}s"

    def plug_in_after_the_timeout(vm: Boot) -> None:
        with Qmp(socket) as qmp:
            vm.expect(EMERGENCY, timeout=300)
            vm.expect(LOCKED, timeout=60)
            vm.expect(PRESS_ENTER, timeout=60)
            # The disk comes after systemd gave up on it; the kernel names it when it is there.
            plug_virtio_disk(qmp, 0)
        vm.expect(r"virtio_blk virtio\d+: \[vd[a-z]\]", timeout=60)
        vm.send("\r")
        vm.expect(RESUMED, timeout=60)

    boot_to_token(late_root_boot(root_boot, locked_initrd, socket, append),
                  on_the_way=plug_in_after_the_timeout)  # fmt: skip
