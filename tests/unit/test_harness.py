"""The test harness's own logic that needs no guest: the mirror apt uses, the tiers, what
a run must make early, the time summary, and QEMU's command line."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bookend.errors import BookendError
from bookend.proc import run
from harness.guestjob import FAILURE_LINES, JobRun
from harness.keys import chords_for
from harness.mirror import MIRROR_ENV, archive_for, debian_mirror, host_suite, parse_records
from harness.netroot import (
    INITRD_GREETING,
    ROOT_GREETING,
    SCENARIOS_ENV,
    read_scenarios,
    record_scenario,
    scenario_lines,
    switch_root_seconds,
)
from harness.network import (
    RELAY,
    free_loopback_port,
    interface_name,
    joined,
    link,
    netdev_id,
    user_network,
)
from harness.qemu import BootOptions, Disk, qemu_argv
from harness.rootdisk import building, made_once
from harness.screen import png_from_ppm
from harness.secureboot import make_esp
from harness.stackdisks import EXIT_SCENARIOS, RESUME_SCENARIOS, SCENARIOS, maker_script
from harness.suite import Phase, disk_needs, run_order, tier_of, time_summary
from harness.timings import TIMINGS_ENV, Timing, read_timings, timed
from tests.pngfile import read_png


def apt_records() -> list[dict[str, str]]:
    """This machine's own `apt-get indextargets` records: its apt configuration."""
    return parse_records(run(["apt-get", "indextargets"]).stdout.decode(errors="replace"))


def serves_main(record: dict[str, str], suite: str) -> bool:
    return (
        record.get("Release") == suite
        and record.get("Component") == "main"
        and record.get("Target-Of") == "deb"
    )


def test_the_mirror_is_the_one_apt_uses_for_the_hosts_main_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    suite = host_suite(Path("/etc/os-release").read_text())
    mirror = debian_mirror()
    assert not mirror.endswith("/")
    assert any(
        serves_main(record, suite) and record["Repo-URI"].rstrip("/") == mirror
        for record in apt_records()
    )


def test_sources_other_components_and_other_suites_are_passed_over() -> None:
    # Built from this machine's own mirror: the records that must not be taken come
    # first and name other repositories (derived names, no host written here).
    suite = host_suite(Path("/etc/os-release").read_text())
    real = next(r for r in apt_records() if serves_main(r, suite))
    base = real["Repo-URI"]
    main = {"Release": suite, "Component": "main", "Target-Of": "deb", "Repo-URI": base}
    decoys = [
        {**main, "Release": f"{suite}-updates", "Repo-URI": base + "updates/"},
        {**main, "Target-Of": "deb-src", "Repo-URI": base + "sources/"},
        {**main, "Component": "contrib", "Repo-URI": base + "contrib/"},
        {**main, "Repo-URI": ""},
    ]
    assert archive_for([*decoys, main], suite) == base.rstrip("/")
    assert archive_for(decoys, suite) is None
    assert archive_for([main], f"{suite}-unknown") is None
    listing = "\n\n".join("\n".join(f"{k}: {v}" for k, v in r.items()) for r in [*decoys, main])
    assert parse_records(listing) == [*decoys, main]


def test_host_suite_comes_from_os_release() -> None:
    assert (
        host_suite('PRETTY_NAME="Debian GNU/Linux 12"\nVERSION_CODENAME=bookworm\n') == "bookworm"
    )
    with pytest.raises(BookendError, match="VERSION_CODENAME"):
        host_suite('ID=debian\nVERSION_CODENAME=""\n')


def test_the_environment_overrides_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    # A local mirror on disk: the override is taken as given, apt is not asked.
    monkeypatch.setenv(MIRROR_ENV, "file:///srv/debian-mirror")
    assert debian_mirror() == "file:///srv/debian-mirror"


def test_tiers_follow_the_directories() -> None:
    assert tier_of("tests/unit/test_elf.py::test_x") == "unit"
    assert tier_of("tests/image/test_host_image.py::test_x[a/b]") == "image"
    assert tier_of("tests/vm/test_boot.py::test_x") == "vm"
    assert tier_of("tests/test_lint.py::test_ruff_check") == "unit"


def test_quick_tiers_run_first_and_boots_waiting_for_slow_disks_last() -> None:
    nodeids = [
        "tests/vm/test_storage.py::a",
        "tests/vm/test_iscsi.py::x[debian13]",
        "tests/vm/test_boot.py::b",
        "tests/image/test_host_image.py::c",
        "tests/test_lint.py::d",
        "tests/vm/test_iscsi.py::x[debian12]",
        "tests/vm/test_uki.py::e",
        "tests/unit/test_elf.py::f",
    ]
    assert [n.split("::")[1] for n in sorted(nodeids, key=run_order)] == [
        "d", "f", "c", "b", "x[debian12]", "a", "x[debian13]", "e",
    ]  # fmt: skip


def needs_of(*nodeids: str) -> tuple[bool, ...]:
    needs = disk_needs(nodeids)
    return needs.root_disk, needs.stacks, needs.trixie_tree, needs.trixie_root, needs.dracut


def test_early_builds_are_only_what_the_selected_tests_need() -> None:
    assert not disk_needs(["tests/unit/test_elf.py::test_x"]).any
    assert needs_of("tests/vm/test_boot.py::a", "tests/image/test_inspect_images.py::b") == (
        True, False, False, False, True,
    )  # fmt: skip
    assert needs_of("tests/vm/test_storage.py::a", "tests/vm/test_uki.py::b") == (
        True, True, True, False, False,
    )  # fmt: skip
    # The Debian 13 guest boots its own root disk, from images of the trixie tree.
    assert needs_of("tests/vm/test_iscsi.py::t[debian13]") == (False, False, True, True, False)
    assert needs_of("tests/vm/test_iscsi.py::t[debian12]") == (True, False, False, False, False)
    # An id that only contains the name is no Debian 13 guest.
    assert needs_of("tests/vm/test_x.py::t[notdebian13]") == (True, False, False, False, False)
    assert not disk_needs(["tests/vm/test_storage.py::a"]).nfs_server
    assert disk_needs(["tests/vm/test_nfs.py::a"]).nfs_server
    assert disk_needs(["tests/vm/test_arm64.py::a"]).arm64_root
    assert not disk_needs(["tests/vm/test_boot.py::a"]).arm64_root
    assert not disk_needs(["tests/vm/test_arm64.py::a"]).root_disk
    # The newer releases' stacks are made by booting the bookworm root disk.
    newer = disk_needs(["tests/vm/test_newer_systemd.py::t[trixie]"])
    assert (newer.newer_systems, newer.root_disk, newer.stacks) == (True, True, False)
    assert not disk_needs(["tests/vm/test_storage.py::a"]).newer_systems
    # The hibernation stack is a set of its own, made by booting the bookworm root disk.
    resume = disk_needs(["tests/vm/test_resume.py::t"])
    assert (resume.resume_stacks, resume.root_disk, resume.stacks) == (True, True, False)
    assert not disk_needs(["tests/vm/test_storage.py::a"]).resume_stacks


def test_greetings_tell_the_initrd_from_the_real_root() -> None:
    """systemd 252 greets an initrd with "Welcome to", 257 with "Booting initrd of"."""
    initrds = ["Welcome to Debian GNU/Linux 12 (bookworm) (bookend initrd)!",
               "Booting initrd of Debian GNU/Linux 13 (trixie) (bookend initrd)."]  # fmt: skip
    roots = [
        "Welcome to Debian GNU/Linux 12 (bookworm)!",
        "Welcome to Debian GNU/Linux 13 (trixie)!",
    ]
    for line in initrds:
        assert re.search(INITRD_GREETING, line) and not re.search(ROOT_GREETING, line)
    for line in roots:
        assert re.search(ROOT_GREETING, line) and not re.search(INITRD_GREETING, line)


def test_time_summary_compares_vm_tests_in_a_row_with_the_wall_time() -> None:
    phases = [
        Phase("tests/unit/test_a.py::t", start=0, stop=1, duration=1),
        Phase("tests/vm/test_b.py::one", start=10, stop=70, duration=60),
        Phase("tests/vm/test_b.py::one", start=70, stop=71, duration=1),
        Phase("tests/vm/test_b.py::two", start=12, stop=92, duration=80),
    ]
    timings = [
        Timing("root disk", 300, "made"),
        Timing("root disk", 41, "waited", "tests/vm/test_b.py::two"),
        Timing("root disk", 0.1, "cached"),
        Timing("UKI tree (Debian 13)", 0.1, "cached"),
    ]
    lines = time_summary(phases, timings, wall=400)
    assert lines == [
        "whole run: 400 s wall time",
        "UKI tree (Debian 13): cached",
        "root disk: made in 300 s, 1 waits for it, 41 s in all",
        "unit: 1 tests, 1 s wall (first start to last end), 1 s summed over tests",
        "vm: 2 tests, 82 s wall (first start to last end), 141 s summed over tests",
        "vm: one guest at a time would have taken 100 s (141 s less 41 s spent waiting for "
        "disks); side by side they took 82 s (1.2x)",
        "    141 s  tests/vm/test_b.py",
    ]


def test_boot_options_make_qemus_command_line(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    member = Disk(tmp_path / "md.img", offset=4096)
    options = BootOptions(kernel=kernel, disks=(member,), append="root=/dev/vda", cpus=1,
                          network=("-nic", "user,restrict=on"))  # fmt: skip
    argv = qemu_argv(options)
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 root=/dev/vda"
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-nic") + 1] == "user,restrict=on" and argv.count("-nic") == 1
    drive = argv[argv.index("-drive") + 1]
    assert drive.endswith(",offset=4096") and "-initrd" not in argv
    uefi = qemu_argv(BootOptions(esp=tmp_path / "esp"))
    assert "-kernel" not in uefi and "-bios" in uefi
    # A kernel under OVMF with a variables store of its own, which outlives the snapshot.
    efi = qemu_argv(BootOptions(kernel=kernel, efi_vars=tmp_path / "vars.fd"))
    flash = [efi[i + 1] for i, arg in enumerate(efi) if arg == "-drive" and "pflash" in efi[i + 1]]
    assert flash[0].endswith(",readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
    assert flash[1].endswith(f",snapshot=off,file={tmp_path}/vars.fd")
    assert "-kernel" in efi and "-bios" not in efi
    with pytest.raises(ValueError, match="kernel or an ESP"):
        qemu_argv(BootOptions(kernel=kernel, esp=tmp_path / "esp"))
    with pytest.raises(ValueError, match="kernel or an ESP"):
        qemu_argv(BootOptions())


def test_disk_timings_name_the_test_that_needed_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv(TIMINGS_ENV, str(tmp_path / "timings.jsonl"))
    with timed("root disk") as outcome:
        outcome.how = "waited"
    with timed("UKI tree"):
        pass
    made, cached = read_timings(tmp_path / "timings.jsonl")
    assert (made.what, made.how, made.nodeid) == ("root disk", "waited", request.node.nodeid)
    assert (cached.what, cached.how) == ("UKI tree", "cached")
    assert 0 <= made.seconds < 5
    monkeypatch.delenv(TIMINGS_ENV)
    with timed("not recorded"):
        pass
    assert len(read_timings(tmp_path / "timings.jsonl")) == 2


CONSOLE = """\
[    2.855099] systemd[1]: systemd 252.39-1~deb12u2 running in system mode (+PAM)
Welcome to Debian GNU/Linux 12 (bookworm) (bookend initrd)!
[    8.516279] systemd-journald[89]: Received SIGTERM from PID 1 (systemd).
[   18.947728] systemd[1]: systemd 252.39-1~deb12u2 running in system mode (+PAM)
Welcome to Debian GNU/Linux 12 (bookworm)!
"""


def test_the_real_roots_greeting_is_told_from_the_initrds() -> None:
    greeting = re.search(ROOT_GREETING, CONSOLE)
    assert greeting and greeting[0] == "Welcome to Debian GNU/Linux 12 (bookworm)!"
    assert re.search(ROOT_GREETING, CONSOLE.split("[    8.5")[0]) is None


def test_switch_root_time_is_the_real_roots_first_systemd_line() -> None:
    assert switch_root_seconds(CONSOLE) == pytest.approx(18.947728)
    with pytest.raises(AssertionError, match="no systemd started after switching root"):
        switch_root_seconds(CONSOLE.split("[    8.5")[0])


def test_scenarios_recorded_by_tests_make_the_reports_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "scenarios.jsonl"
    monkeypatch.setenv(SCENARIOS_ENV, str(report))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\0" * 3 * 2**20)
    record_scenario("nfs root, v4", CONSOLE, initrd)
    (tmp_path / "exitrd.img").write_bytes(b"\0" * 2**20)
    record_scenario("iscsi root", CONSOLE, initrd)
    scenarios = read_scenarios(report)
    assert [s.exitrd_bytes for s in scenarios] == [0, 2**20]
    lines = scenario_lines(scenarios)
    assert lines[1].split() == ["iscsi", "root", "18.9", "s", "3.0", "MiB", "1.0", "MiB"]
    assert lines[2].split() == ["nfs", "root,", "v4", "18.9", "s", "3.0", "MiB", "-"]


def test_a_guests_nics_each_get_a_netdev_mac_and_pci_slot() -> None:
    with link() as cable:
        dead = cable.end(0, index=0)
        live = user_network(relayed=(("10.0.2.100", 10809, 4000),), index=1)
        nics = joined(dead, live)
        argv = qemu_argv(BootOptions(kernel=Path("/vmlinuz"), network=nics.args,
                                     pass_fds=nics.pass_fds))  # fmt: skip
        assert nics.pass_fds == dead.pass_fds and len(nics.pass_fds) == 1
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert devices == [
        f"virtio-net-pci,netdev={netdev_id(0)},mac={dead.mac},addr=0x3",
        f"virtio-net-pci,netdev={netdev_id(1)},mac={live.mac},addr=0x4",
    ]
    assert dead.mac != live.mac
    assert [interface_name(0), interface_name(1)] == ["ens3", "ens4"]
    netdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]
    assert netdevs[0].endswith(",id=net0") and netdevs[1].endswith(",id=net1")
    assert netdevs[1].startswith("user,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:")


def test_a_failed_jobs_message_carries_the_console_up_to_its_status() -> None:
    lines = [f"[ {n}.0] bookend-test-job[1]: + step {n}" for n in range(100)]
    text = "\n".join([*lines, "BOOKEND-JOB-STATUS 1", "[ 101.0] reboot: Power down"])
    message = JobRun(status=1, text=text, seconds=1.0).why_failed(Path("/c.log"))
    first, *tail = message.splitlines()
    assert first == "the job failed with status 1 (console: /c.log); the console before:"
    assert tail == lines[-FAILURE_LINES:]


def relay_for(port: int, *wait: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """harness/relay.py serving one guest connection (a socketpair: the guest's end is
    returned) towards 127.0.0.1:port, as QEMU starts it."""
    guest, relay_end = socket.socketpair()
    with relay_end:
        relay = subprocess.Popen([sys.executable, "-I", "-S", str(RELAY), str(port), *wait],
                                 stdin=relay_end.fileno(), stdout=relay_end.fileno(),
                                 stderr=relay_end.fileno())  # fmt: skip
    return guest, relay


def test_the_relay_closes_the_guests_connection_silently_when_no_server_listens() -> None:
    guest, relay = relay_for(free_loopback_port())  # nothing listens there
    with guest:
        assert relay.wait(timeout=30) == 1
        assert guest.recv(4096) == b""  # no traceback sent to the guest


def test_a_waiting_relay_passes_on_what_the_guest_sent_once_the_server_is_back() -> None:
    port = free_loopback_port()  # the server is down when the guest connects
    guest, relay = relay_for(port, "30")
    with guest:
        guest.sendall(b"login")
        time.sleep(1)  # the relay has tried and failed by now
        with socket.create_server(("127.0.0.1", port)) as server:
            connection, _ = server.accept()
            with connection:
                assert connection.recv(5, socket.MSG_WAITALL) == b"login"
                connection.sendall(b"welcome")
                assert guest.recv(7, socket.MSG_WAITALL) == b"welcome"
        guest.shutdown(socket.SHUT_WR)
        assert relay.wait(timeout=30) == 0


def test_a_waiting_relay_gives_up_when_the_guest_does() -> None:
    guest, relay = relay_for(free_loopback_port(), "300")  # nothing ever listens there
    guest.sendall(b"login")
    guest.close()
    assert relay.wait(timeout=30) == 1  # long before its 300 s


def test_typing_on_a_german_keymap_presses_other_keys_than_on_a_us_one() -> None:
    assert chords_for("yz@", "us") == [("y",), ("z",), ("shift", "2")]
    assert chords_for("yz@", "de") == [("z",), ("y",), ("alt_r", "q")]
    assert chords_for("Pa-ss 1\n", "us") == [
        *(("shift", "p"), ("a",), ("minus",), ("s",), ("s",)),
        *(("spc",), ("1",), ("ret",)),
    ]


def test_a_character_the_keymap_cannot_type_is_refused() -> None:
    with pytest.raises(ValueError, match="keymap 'us': no key here types 'ß€'"):
        chords_for("aß€", "us")


def test_devices_are_passed_to_qemu_before_the_disks(tmp_path: Path) -> None:
    tpm = ("-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
    argv = qemu_argv(BootOptions(kernel=tmp_path / "k", devices=tpm, disks=(tmp_path / "d",)))
    at = argv.index("-tpmdev")
    assert argv[at : at + 4] == list(tpm)
    assert at < argv.index("-drive")


def test_a_ppm_screendump_becomes_a_png_any_reader_opens() -> None:
    # An older QEMU's screendump: binary PPM, here 2x2 pixels.
    pixels = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 1, 2, 3])
    png = png_from_ppm(b"P6\n2 2\n255\n" + pixels)
    assert read_png(png) == (2, 2, [pixels[:6], pixels[6:]])
    with pytest.raises(ValueError, match="P6"):
        png_from_ppm(b"P3\n2 2\n255\n0 0 0")


def test_a_cached_result_is_made_once_and_stale_builds_are_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".build-k1-interrupted"
    stale.mkdir()
    other = tmp_path / ".build-k2-running"  # another recipe's build: left alone
    other.mkdir()
    made: list[Path] = []

    def make() -> None:
        made.append(tmp_path / "result-k1")
        (tmp_path / "result-k1").mkdir()

    for _ in range(2):
        made_once("a test set", tmp_path / "result-k1", tmp_path / "k1.lock", "k1", make)
    assert made == [tmp_path / "result-k1"]
    assert not stale.exists() and other.exists()


def test_a_set_is_made_aside_and_found_only_when_complete(tmp_path: Path) -> None:
    result = tmp_path / "set-k1"
    with pytest.raises(RuntimeError), building(result, "k1") as work:
        (work / "disk.img").write_text("half")
        raise RuntimeError("the maker guest failed")
    assert not result.exists() and list(tmp_path.iterdir()) == []
    with building(result, "k1") as work:
        (work / "disk.img").write_text("whole")
    assert (result / "disk.img").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["set-k1"]


def test_the_hibernation_stack_is_a_set_of_its_own() -> None:
    """Its maker function goes only into its own set's script, so the other sets' keys
    (and their cached disks) stay as they were."""
    assert "make_swap_lvm_on_luks" not in maker_script(SCENARIOS) + maker_script(EXIT_SCENARIOS)
    script = maker_script(RESUME_SCENARIOS)
    assert "\nmake_stack make_swap_lvm_on_luks\n" in script
    assert "mkswap -U b00ce4d0-7e57-4b00-8007-000000000003 " in script
    assert "resume=UUID=b00ce4d0-7e57-4b00-8007-000000000003" in RESUME_SCENARIOS[0].cmdline


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("mkfs.vfat", "mmd", "mcopy", "mtype")),
    reason="mtools and dosfstools (scripts/setup)",
)
def test_an_esp_holds_the_uki_at_the_removable_path_and_the_stubs_sidecar_files(
    tmp_path: Path,
) -> None:
    program = tmp_path / "uki.efi"
    program.write_bytes(b"MZ uki")
    extra = {"EFI/BOOT/BOOTX64.EFI.extra.d/a.cred": b"one", "loader/credentials/b.cred": b"two"}
    image = make_esp(tmp_path / "esp.img", program, extra)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for path, data in {"EFI/BOOT/BOOTX64.EFI": b"MZ uki", **extra}.items():
        shown = subprocess.run(["mtype", "-i", image, f"::/{path}"], env=env,
                               capture_output=True, check=True)  # fmt: skip
        assert shown.stdout == data, path
