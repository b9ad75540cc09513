"""Root storage daemons: the drop-in that keeps them alive, and the exitrd hook that stops them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features.base import RequestKind
from bookend.features.storage_daemons import (
    DETACH_DIR,
    DROPIN_NAME,
    STOP_HOOK,
    STOP_SCRIPT,
    announce_start,
    at_argv0,
    daemon_dropin,
    systemd_version,
    unit_pid_file,
)
from bookend.install import install_storage_daemon_dropins
from bookend.plan import make_plan
from bookend.sysroot import Sysroot
from tests.unit.conftest import load_config
from tests.unit.elftree import compile_c, install_libc, shared_library

UNIT = (
    "[Unit]\nDescription=iSCSI\n[Service]\nExecStartPre=/bin/true\nExecStart=/usr/sbin/iscsid -f\n"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/usr/sbin/iscsid -f", "@/usr/sbin/iscsid @iscsid -f"),
        ("-/usr/sbin/nbd-client", "@-/usr/sbin/nbd-client @nbd-client"),
        ("@/usr/sbin/x @own-name", "@/usr/sbin/x @own-name"),  # the unit's own choice stays
    ],
)
def test_argv0_starts_with_at(value: str, expected: str) -> None:
    assert at_argv0(value) == expected


def test_dropin_before_and_after_survive_final_kill_signal() -> None:
    old = daemon_dropin("iscsid.service", UNIT, 252)
    assert "IgnoreOnIsolate=yes\n" in old and "DefaultDependencies=no\n" in old
    assert old.endswith("ExecStart=\nExecStart=@/usr/sbin/iscsid @iscsid -f\n")
    new = daemon_dropin("iscsid.service", UNIT, 256)
    # A [Unit] setting: under [Service] systemd ignores it, and the daemon dies at
    # switch-root (systemd's SIGTERM to what is left of the initrd) and at shutdown.
    assert sections(new)["Unit"] >= {"SurviveFinalKillSignal=yes", "IgnoreOnIsolate=yes"}
    assert "ExecStart=" not in new and "SurviveFinalKillSignal" not in str(sections(new)["Service"])
    for dropin in (old, new):
        assert announce_start("iscsid") in dropin.splitlines()


def sections(unit: str) -> dict[str, set[str]]:
    """A unit file's lines by section, comments left out."""
    found: dict[str, set[str]] = {}
    current = ""
    for line in unit.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif line and not line.startswith("#"):
            found.setdefault(current, set()).add(line)
    return found


def test_the_running_systems_dropin_keeps_the_mark_from_systemd_255(tmp_path: Path) -> None:
    """install-exitrd --storage-daemon: the running system's copy of the unit is never
    stopped, and from 255 on is marked to survive the final kill as the initrd's was."""
    for version, survives in ((252, False), (257, True), (None, False)):
        units = tmp_path / str(version)
        units.mkdir()
        [dropin] = install_storage_daemon_dropins(["iscsid.service"], units, version)
        assert dropin == units / "iscsid.service.d" / DROPIN_NAME
        unit = sections(dropin.read_text())["Unit"]
        assert {"DefaultDependencies=no", "IgnoreOnIsolate=yes"} <= unit
        assert ("SurviveFinalKillSignal=yes" in unit) is survives, version


def run_start_post(line: str, main_pid: int | str, kmsg: Path) -> str:
    """Run an ExecStartPost= line as systemd would ("$$" is "$", quotes split words, "-"
    ignores failure), with $MAINPID set and kmsg for /dev/kmsg: what it wrote there."""
    command = line.removeprefix("ExecStartPost=").removeprefix("-")
    argv = shlex.split(command.replace("$$", "$").replace("/dev/kmsg", str(kmsg)))
    subprocess.run(argv, env={"MAINPID": str(main_pid)}, check=True)
    return kmsg.read_text()


def test_start_announcement_names_the_main_pid(tmp_path: Path) -> None:
    line = announce_start("nbd-client")
    assert line.startswith("ExecStartPost=-/bin/sh ")  # a console error never fails it
    said = run_start_post(line, 4321, tmp_path / "kmsg")
    assert said == "bookend: root storage daemon nbd-client runs as pid 4321\n"


def test_start_announcement_reads_the_pid_file_when_systemd_has_no_main_pid_yet(
    tmp_path: Path,
) -> None:
    # A forking daemon whose parent exited before its child wrote the PID file: with an
    # ExecStartPost= systemd does not wait for the file, and $MAINPID is empty.
    pid_file = tmp_path / "daemon.pid"
    line = announce_start("iscsid", str(pid_file))
    writer = subprocess.Popen(["sh", "-c", f"sleep 0.3; echo 5678 > {pid_file}"])
    said = run_start_post(line, "", tmp_path / "kmsg")
    writer.wait()
    assert said == "bookend: root storage daemon iscsid runs as pid 5678\n"
    # With the main PID known the file is not read.
    pid_file.write_text("1\n")
    assert run_start_post(line, 4321, tmp_path / "again").endswith("pid 4321\n")
    # A unit's own PIDFile= is the one its drop-in reads.
    assert unit_pid_file("[Service]\nType=forking\nPIDFile=/run/x.pid\n") == "/run/x.pid"
    assert unit_pid_file("[Service]\nType=simple\n") is None


def test_plan_brings_unit_dropin_and_wants_link(root_tree: Path) -> None:
    (root_tree / "usr/lib/systemd/system").mkdir(parents=True)
    (root_tree / "usr/lib/systemd/system/iscsid.service").write_text(UNIT)
    (root_tree / "usr/lib/systemd/libsystemd-shared-252.so").write_text("")
    assert systemd_version(Sysroot(root_tree)) == 252
    config = load_config(
        None,
        {"sysroot": str(root_tree), "storage_daemons": ["iscsid.service"], "mode": "generic"},
    )
    plan = make_plan(config)
    assert "storage-daemons" in plan.features
    files = {g.entry.path: g.entry for g in plan.generated}
    dropin = files["/etc/systemd/system/iscsid.service.d/bookend-storage-daemon.conf"]
    assert dropin.data == daemon_dropin("iscsid.service", UNIT, 252).encode()
    wants = files["/etc/systemd/system/initrd-root-device.target.wants/iscsid.service"]
    assert wants.target == "/usr/lib/systemd/system/iscsid.service"
    assert any(r.kind is RequestKind.UNIT and r.name == "iscsid.service" for r in plan.requests)
    exitrd = make_exitrd_plan(config, plan)
    hook = next(g.entry for g in exitrd.generated if g.entry.path == STOP_HOOK)
    assert hook.mode == 0o755 and hook.data == STOP_SCRIPT.encode()


def test_systemd_version_from_the_library_its_manager_links(tmp_path: Path) -> None:
    """Debian keeps libsystemd-shared-N.so in a multiarch directory: the manager's
    DT_NEEDED names it wherever it is, and /lib -> usr/lib is followed on the way."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    root = tmp_path / "root"
    install_libc(root)
    (root / "lib").symlink_to("usr/lib")
    library = "usr/lib/x86_64-linux-gnu/systemd"
    shared_library(root, library, "libsystemd-shared-257.so", "int shared(void) { return 0; }")
    manager = root / "usr/lib/systemd/systemd"
    compile_c("int shared(void); int main(void) { return shared(); }", manager,
              f"-L{root / library}", "-l:libsystemd-shared-257.so")  # fmt: skip
    # A stray library of another version elsewhere does not fool it.
    (root / "usr/lib/systemd/libsystemd-shared-252.so").write_text("")
    assert systemd_version(Sysroot(root)) == 257
    manager.unlink()  # no program to read: the library in systemd's own directory
    assert systemd_version(Sysroot(root)) == 252
    (root / "usr/lib/systemd/libsystemd-shared-252.so").unlink()
    assert systemd_version(Sysroot(root)) is None


def test_unknown_daemon_unit_is_an_error(root_tree: Path) -> None:
    # Found by the configuration's checks, before any plan is made.
    with pytest.raises(ConfigError, match=r"command line: storage_daemons: unit nope.service"):
        load_config(None, {"sysroot": str(root_tree), "storage_daemons": ["nope.service"]})


def test_hook_stops_only_at_processes(tmp_path: Path) -> None:
    """In a PID namespace of its own: an '@' daemon is stopped, other processes are not."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    if Path("/proc/self/cgroup").read_text().rstrip().endswith(".service"):
        # The hook stops whatever survives in a service's cgroup, as these would.
        pytest.skip("runs in a service's cgroup")
    log = tmp_path / "kmsg"
    hook = tmp_path / "hook"
    hook.write_text(STOP_SCRIPT.replace("/dev/kmsg", str(log)))
    script = (
        'bash -c "exec -a @storaged sleep 30" & '
        'bash -c "exec -a plain sleep 30" & '
        f"sleep 0.3; sh {hook}; ps -eo args"
    )
    done = subprocess.run(["unshare", "-fp", "--mount-proc", "sh", "-c", script],
                          capture_output=True, text=True, timeout=20)  # fmt: skip
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("no PID namespaces here")
    remaining = done.stdout.splitlines()
    assert "plain 30" in remaining and not any(p.startswith("@storaged") for p in remaining)
    assert log.read_text() == "bookend: stopping root storage daemon sleep (pid 2)\n"


def fake_process(proc: Path, pid: int, argv: list[str], cgroup: str) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    (directory / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
    (directory / "cgroup").write_text(cgroup)
    (directory / "comm").write_text((argv[0] if argv else "kthread")[:15] + "\n")


def test_hook_finds_both_kinds_of_spared_daemons(tmp_path: Path) -> None:
    """'@' argv[0] (systemd < 255) and a service cgroup (SurviveFinalKillSignal=, >= 255)."""
    proc = tmp_path / "proc"
    fake_process(proc, 1, ["/shutdown", "poweroff"], "0::/init.scope\n")
    fake_process(proc, 2, [], "0::/\n")  # a kernel thread
    fake_process(proc, 300, ["@nbd-client", "10.0.2.100"], "0::/system.slice/nbd.service\n")
    fake_process(proc, 400, ["/usr/sbin/iscsid", "-f"], "0::/system.slice/iscsid.service\n")
    fake_process(proc, 500, ["/bin/sh", "/usr/lib/x/hook"], "0::/init.scope\n")
    fake_process(proc, 600, ["/usr/sbin/multipathd"], "1:name=systemd:/system.slice/m.service\n")
    hook = tmp_path / "hook"
    hook.write_text(STOP_SCRIPT)
    listed = subprocess.run(["sh", str(hook), "--list"], env={"BOOKEND_PROC": str(proc)},
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert sorted(listed.stdout.split(), key=int) == ["300", "400", "600"]


def test_hook_runs_detach_steps_before_stopping(tmp_path: Path) -> None:
    assert f"for step in {DETACH_DIR}/*;" in STOP_SCRIPT
    assert STOP_SCRIPT.index(DETACH_DIR) < STOP_SCRIPT.index('stop_daemon "$pid"')
