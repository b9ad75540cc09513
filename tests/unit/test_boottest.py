"""`bookend boot-test` without a guest: the console of a recorded boot (a plain root,
shut down through the exitrd) read into its report, failures read from their lines, the
summary, the timeline, and the checks of its inputs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from bookend.arches import X86_64, Arch
from bookend.boottest.guest import SCRIPT_BYTES, command_line, write_script_disk
from bookend.boottest.report import parse, phase_spans, summary
from bookend.boottest.run import (
    SHARE_FEATURE,
    SHARE_TAG,
    BootTest,
    check_inputs,
    check_share,
    disk_format,
    share_args,
    share_words,
)
from bookend.boottest.timeline import svg, write_timeline
from bookend.cli import main
from bookend.errors import ConfigError
from bookend.features import ALL

RECORDED = Path(__file__).parent / "data" / "boottest-pass.console"
TOKEN = "cb550688bc49407b"  # the recorded boot's


@pytest.fixture(scope="module")
def console() -> str:
    return RECORDED.read_text()


def test_a_recorded_boot_passes_with_its_phases_units_and_exitrd(console: str) -> None:
    report = parse(console, TOKEN, 0, expect_exitrd=True)
    assert report.passed, report.reasons
    assert report.default_target == "multi-user.target"
    phases = report.phases
    assert phases.init is not None and phases.switch_root is not None
    assert 0 < phases.init < phases.switch_root < (phases.root_reached or 0)
    assert (phases.root_reached or 0) < (phases.poweroff or 0) < (phases.exitrd or 0)
    assert (phases.exitrd or 0) < (phases.power_down or 0)
    assert [name for name, _s, _e in phase_spans(phases)] == [
        "kernel", "initrd", "root", "root's shutdown", "exitrd"
    ]  # fmt: skip
    names = {unit.name for unit in report.initrd_units}
    # The early ones from the console (before the initrd's journald), the rest from the
    # journal the root dumped.
    assert {"systemd-udevd.service", "sysroot.mount", "systemd-fsck-root.service"} <= names
    assert all(u.end <= phases.switch_root for u in report.initrd_units)
    assert report.through_exitrd
    assert "bookend: old root unmounted, every DM and MD device detached" in report.exitrd_lines


def test_another_token_is_no_proof(console: str) -> None:
    report = parse(console, "0123456789abcdef", 0, expect_exitrd=True)
    assert not report.passed
    assert report.phases.root_reached is None


def test_a_shutdown_that_did_not_power_off_fails(console: str) -> None:
    report = parse(console, TOKEN, None, expect_exitrd=True)
    assert report.reasons == ("the guest did not power off within the time limit",)


def test_a_shutdown_without_the_exitrd_fails_when_the_image_carries_one(console: str) -> None:
    without = "\n".join(line for line in console.splitlines() if "Entering exitrd" not in line
                        and "Returning to initrd" not in line)  # fmt: skip
    assert parse(without, TOKEN, 0, expect_exitrd=True).reasons == (
        "the shutdown did not go through the exitrd",
    )
    assert parse(without, TOKEN, 0, expect_exitrd=False).passed


INITRD_FAILURE = """\
[    9.000000] Run /init as init process
[   20.000000] mount: /sysroot: unknown filesystem type 'ext4'.
[FAILED] Failed to mount sysroot.mount - /sysroot.
[DEPEND] Dependency failed for initrd-root-fs.target - Initrd Root File System.
You are in emergency mode. After logging in, type "journalctl -xb" to view
"""
ROOT_EMERGENCY = """\
[    9.000000] Run /init as init process
[  OK  ] Reached target initrd-switch-root.target - Switch Root.
         Starting initrd-switch-root.service - Switch Root...
Welcome to Debian GNU/Linux 12 (bookworm)!
[  OK  ] Started emergency.service - Emergency Shell.
Cannot open access to console, the root account is locked.
"""


def test_an_initrd_that_cannot_mount_the_root_says_why() -> None:
    report = parse(INITRD_FAILURE, TOKEN, None, expect_exitrd=True)
    (reason,) = report.reasons
    assert reason.startswith("the initrd entered emergency mode")
    assert "unknown filesystem type 'ext4'" in reason
    assert "Failed to mount sysroot.mount" in reason


def test_a_root_in_emergency_mode_never_reached_its_target() -> None:
    (reason,) = parse(ROOT_EMERGENCY, TOKEN, None, expect_exitrd=True).reasons
    assert reason.startswith("the root entered emergency mode instead of its default target")


def test_a_panic_is_named() -> None:
    text = "[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    (reason,) = parse(text, TOKEN, None, expect_exitrd=True).reasons
    assert reason.startswith("the kernel panicked: Kernel panic - not syncing: VFS")


def test_summary_and_json(console: str) -> None:
    report = parse(console, TOKEN, 0, expect_exitrd=True)
    text = summary(report)
    assert text.startswith("boot-test: PASSED\n")
    assert "phases: kernel 7.0 s, initrd 40.7 s" in text
    assert "slowest units in the initrd:" in text
    assert "shutdown: through the exitrd" in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["passed"] is True
    assert data["slowest_initrd_units"][0]["name"] == "systemd-udev-trigger.service"
    failed = summary(parse(INITRD_FAILURE, TOKEN, None, expect_exitrd=True))
    assert failed.startswith("boot-test: FAILED\n  why: the initrd entered emergency mode")


def test_timeline_draws_each_phase_and_initrd_unit(console: str, tmp_path: Path) -> None:
    report = parse(console, TOKEN, 0, expect_exitrd=True)
    picture = svg(report)
    assert picture.startswith("<svg ")
    for label in (">kernel (", ">initrd (", ">root (", ">exitrd (", ">sysroot.mount ("):
        assert label in picture
    assert picture.count("<rect ") == 1 + 5 + len(report.initrd_units)
    write_timeline(report, tmp_path / "boot.html")
    assert (tmp_path / "boot.html").read_text().startswith("<!DOCTYPE html>")


def test_the_script_disk_is_padded_with_newlines(tmp_path: Path) -> None:
    write_script_disk(tmp_path / "s.img", TOKEN)
    data = (tmp_path / "s.img").read_bytes()
    assert len(data) == SCRIPT_BYTES and b"\0" not in data
    assert f"BOOKEND-BOOT-TEST {TOKEN} poweroff".encode() in data
    words = command_line("bookend1")
    assert "/dev/disk/by-id/virtio-bookend1" in words
    assert "systemd.unit=kernel-command-line.service" in words


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "0 bytes"),
        (b"\0" * 1000, "1000 bytes"),
        (b"\x7fELF" + b"\0" * 508, "an ELF program"),
        (b"070701" + b"\0" * 506, "a cpio archive"),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 508, "zstd"),
    ],
)
def test_a_file_that_is_not_a_disk_is_refused(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=said):
        disk_format(path)


def test_disk_formats(tmp_path: Path) -> None:
    (tmp_path / "raw").write_bytes(b"\0" * 4096)
    (tmp_path / "qcow").write_bytes(b"QFI\xfb" + b"\0" * 100)
    assert disk_format(tmp_path / "raw") == "raw"
    assert disk_format(tmp_path / "qcow") == "qcow2"
    with pytest.raises(ConfigError, match="a directory"):
        disk_format(tmp_path)


def test_bad_inputs_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "initrd.img"
    image.write_bytes(b"070701")
    status = main(["boot-test", str(image), "--kernel", str(tmp_path / "none"),
                   "--disk", str(image)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "no kernel there" in err
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    status = main(["boot-test", str(image), "--kernel", str(kernel), "--disk", str(image)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "a cpio archive" in err
    # No --disk: the sysroot is the root, and one that is no root tree is refused.
    status = main(["boot-test", str(image), "--kernel", str(kernel), "--sysroot", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "no sbin/init" in err
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    test = BootTest(kernel=kernel, image=image, disks=(disk,), arch=replace_qemu("no-such-qemu"))
    with pytest.raises(ConfigError, match="no QEMU: no-such-qemu is not on PATH"):
        check_inputs(test)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--cpus", "0", "--cpus 0: at least 1"),
        ("--memory", "64", "--memory 64: at least 256 MiB"),
        ("--timeout", "0", "--timeout 0: a number of seconds above 0"),
    ],
)
def test_a_guest_too_small_to_boot_is_refused_before_a_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, said: str
) -> None:
    # No image given: the refusal comes before anything is built (the sysroot is none).
    status = main(["boot-test", "--sysroot", str(tmp_path / "none"), option, value])
    err = capsys.readouterr().err
    assert status == 2 and err == f"bookend: {said}\n"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    test = BootTest(kernel=kernel, image=kernel, disks=(kernel,))
    small = {
        "--cpus": replace(test, cpus=int(value)),
        "--memory": replace(test, memory_mib=int(value)),
        "--timeout": replace(test, timeout=float(value)),
    }
    with pytest.raises(ConfigError, match=said):
        check_inputs(small[option])


def replace_qemu(program: str) -> Arch:
    return replace(X86_64, qemu=program)


def fake_qemu(tmp_path: Path, body: str) -> Arch:
    """X86_64 whose QEMU is a script (which execs its last command, so killing it ends
    it): the probe's verdict on a machine that answers so."""
    program = tmp_path / "qemu"
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)
    return replace(X86_64, qemu=str(program))


@pytest.mark.parametrize(
    ("body", "usable"),
    [
        # SeaBIOS ran to its end under KVM.
        ('echo "Booting from Hard Disk..."; echo "No bootable device."; exec sleep 30', True),
        # The CPU model cannot start under KVM (a nested host's MSR refusal): QEMU ends.
        ('echo "error: failed to set MSR 0x10a to 0x69" >&2; exit 134', False),
        # The guest hangs: nothing on the console before the time is up.
        ("exec sleep 30", False),
    ],
)
def test_the_kvm_probe_says_yes_only_when_the_firmware_ran_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, usable: bool
) -> None:
    import bookend.boottest.qemu as qemu

    arch = fake_qemu(tmp_path, body)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert qemu.kvm_usable(arch, "x86_64", timeout=1.0) is usable


def test_the_kvm_probe_runs_the_machine_the_boot_will_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bookend.boottest.qemu as qemu

    seen = tmp_path / "argv"
    arch = fake_qemu(tmp_path, f'echo "$@" > {seen}; echo "No bootable device."')
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert qemu.kvm_usable(arch, "x86_64", timeout=2.0)
    words = seen.read_text().split()
    assert words[words.index("-accel") + 1] == "kvm"
    boot = qemu.machine_argv(qemu.BootOptions(arch=arch, accel="kvm"))
    assert words == boot[1:]


def test_a_shared_root_is_read_only_over_9p_and_writable_in_ram(tmp_path: Path) -> None:
    tree = tmp_path / "a,tree"
    assert share_args(tree) == [
        "-virtfs",
        f"local,path={tmp_path}/a,,tree,mount_tag={SHARE_TAG},readonly=on,security_model=none",
    ]
    words = share_words().split()
    assert f"root={SHARE_TAG}" in words and "rootfstype=9p" in words and "ro" in words
    assert "systemd.volatile=overlay" in words and "fstab=no" in words
    flags = next(w for w in words if w.startswith("rootflags=")).removeprefix("rootflags=")
    assert {"trans=virtio", "version=9p2000.L"} <= set(flags.split(","))
    # The image's feature brings the modules that mount it.
    assert {"9p", "9pnet_virtio", "overlay"} <= set(ALL[SHARE_FEATURE].modules)


def test_a_shared_root_must_be_a_root_tree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        check_share(tmp_path / "none")
    with pytest.raises(ConfigError, match="no sbin/init"):
        check_share(tmp_path)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/init").write_text("")
    check_share(tmp_path)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    test = BootTest(kernel=kernel, image=kernel, disks=(), share=tmp_path / "none")
    with pytest.raises(ConfigError, match="no root tree to share"):
        check_inputs(test)
    with pytest.raises(ConfigError, match="no --disk and no root tree"):
        check_inputs(replace(test, share=None))


def test_a_mark_after_the_consoles_palette_reset_still_counts(console: str) -> None:
    # systemd 257 resets the console's palette (OSC 104) before it prints; the console
    # kept "104" and the BEL in front of the root's mark.
    mark = f"BOOKEND-BOOT-TEST {TOKEN} reached"
    assert mark in console
    for reset in ("104\x07", "\x1b]104\x07", "\x1b[0m"):
        report = parse(console.replace(mark, reset + mark), TOKEN, 0, expect_exitrd=True)
        assert report.passed, (reset, report.reasons)
