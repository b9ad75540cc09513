"""iSCSI roots: the generator's reading of netroot=iscsi:, the feature's parts, and the
CHAP credentials that make an image secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bookend.build import write_image
from bookend.closure import build_closure
from bookend.errors import ConfigError
from bookend.exitrd import make_exitrd_plan
from bookend.features.base import Generated, Request, RequestKind
from bookend.features.iscsi import (
    CONFIG_FILE,
    DAEMON_UNIT,
    DETACH_STEP,
    FILES_UNIT,
    FIRMWARE_UNIT,
    GENERATOR,
    INITIATOR_FILE,
    detach_script,
    generator_script,
)
from bookend.features.storage_daemons import STOP_HOOK
from bookend.inspect.image import scan_image
from bookend.manifest import with_manifest
from bookend.plan import Plan, make_plan
from tests.unit.conftest import load_config
from tests.unit.test_network_roots import unit_lines

ISCSID, ISCSIADM = "/usr/sbin/iscsid", "/usr/sbin/iscsiadm"
ROOT_IQN = "iqn.2009-06.dracut:target0"
LOGIN = "bookend-iscsi-login-{}.service"


def run_generator(tmp_path: Path, cmdline: str, systemd: int = 252) -> dict[str, str]:
    """The iSCSI generator run on the host with a fake command line: what it wrote.

    iscsi-iname is a stand-in printing a fixed name; the image's initiator file is
    tmp_path/initiatorname.iscsi (absent unless a test writes it).
    """
    iname = tmp_path / "iscsi-iname"
    iname.write_text("#!/bin/sh\necho iqn.2016-04.com.open-iscsi:generated\n")
    iname.chmod(0o755)
    script = generator_script(ISCSID, ISCSIADM, str(iname), systemd)
    (tmp_path / "generator").write_text(script)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    out = tmp_path / "out"
    env = {
        "BOOKEND_CMDLINE": str(tmp_path / "cmdline"),
        "BOOKEND_UNIT_DIR": str(out / "run-system"),
        "BOOKEND_RUN_DIR": str(out / "run-bookend"),
        "BOOKEND_LOCK_DIR": str(out / "lock/iscsi"),
        "BOOKEND_INITIATOR_FILE": str(tmp_path / "initiatorname.iscsi"),
        "BOOKEND_KMSG": str(tmp_path / "kmsg"),
        "PATH": "/usr/bin:/bin",
    }
    dirs = [str(out / name) for name in ("normal", "early", "late")]
    subprocess.run(["sh", str(tmp_path / "generator"), *dirs], env=env, check=True)
    written = {}
    for path in sorted(out.rglob("*")):
        relative = str(path.relative_to(out)).replace(str(out), "OUT")
        if path.is_symlink():
            written[relative] = "-> " + str(path.readlink()).replace(str(out), "OUT")
        elif path.is_file():
            written[relative] = path.read_text().replace(str(out), "OUT")
    return written


def starts(written: dict[str, str], unit: str) -> list[str]:
    lines = unit_lines(written[f"run-system/{unit}"])
    return [line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart=")]


def test_dracut_form_becomes_login_unit_and_root_storage_daemon(tmp_path: Path) -> None:
    cmdline = f"root=UUID=1234 rw netroot=iscsi:192.168.50.1::::{ROOT_IQN} ip=dhcp"
    written = run_generator(tmp_path, cmdline)
    node = f'{ISCSIADM} -m node -T "{ROOT_IQN}" -p "192.168.50.1:3260"'
    assert starts(written, LOGIN.format(1)) == [f"{node} -o new", f"{node} --login"]
    login = unit_lines(written[f"run-system/{LOGIN.format(1)}"])
    for line in ("DefaultDependencies=no", "IgnoreOnIsolate=yes", f"Requires={DAEMON_UNIT}",
                 f"After=network-online.target {DAEMON_UNIT}", "Wants=network-online.target",
                 "Before=initrd-root-device.target", "RemainAfterExit=yes"):  # fmt: skip
        assert line in login, line
    # The daemon: "@" argv[0] on systemd 252, a generated initiator name (none in the image).
    assert starts(written, DAEMON_UNIT) == [
        f"@{ISCSID} @iscsid -i OUT/run-bookend/initiatorname.iscsi"
    ]
    daemon = unit_lines(written[f"run-system/{DAEMON_UNIT}"])
    assert "IgnoreOnIsolate=yes" in daemon and "DefaultDependencies=no" in daemon
    assert not any(line.startswith("SurviveFinalKillSignal") for line in daemon)
    initiator = written["run-bookend/initiatorname.iscsi"]
    assert initiator == "InitiatorName=iqn.2016-04.com.open-iscsi:generated\n"
    # The real root (not the initrd) gives iscsid back its files, from /run.
    files_unit = unit_lines(written[f"run-system/{FILES_UNIT}"])
    assert "ConditionPathExists=!/etc/initrd-release" in files_unit
    assert "ExecStart=/bin/sh OUT/run-bookend/give-iscsid-files" in files_unit
    assert written[f"run-system/sysinit.target.wants/{FILES_UNIT}"] == f"-> ../{FILES_UNIT}"
    give_back = written["run-bookend/give-iscsid-files"]
    assert 'mount -c -t sysfs sysfs "$root/sys"' in give_back
    assert "root:x:0:0:root:/root:/bin/sh" in give_back
    wants = "normal/initrd-root-device.target.wants"
    for unit in (DAEMON_UNIT, LOGIN.format(1)):
        assert written[f"{wants}/{unit}"] == f"-> OUT/run-system/{unit}"
    assert not any(name.startswith(("early/", "late/")) for name in written)
    assert (tmp_path / "out/lock/iscsi").is_dir()  # iscsiadm's lock directory's parent
    # The real root's own open-iscsi daemon units are masked for the boot, in /run.
    for unit in ("iscsid.service", "iscsid.socket"):
        assert written[f"run-system/{unit}"] == "-> /dev/null"


@pytest.mark.parametrize(
    ("spec", "portal", "target"),
    [
        # PORT, LUN and a target name with colons of its own
        ("10.0.2.100::3261:1:iqn.2003-01.org.example:disk:1", "10.0.2.100:3261",
         "iqn.2003-01.org.example:disk:1"),
        # PROTOCOL 6, IFACE and NETDEV fields (ignored), an IPv6 server
        ("[fd00::1]:6:3260:default:ens3:0:naa.600a0b80", "[fd00::1]:3260", "naa.600a0b80"),
        ("srv::::eui.02004567A425678D", "srv:3260", "eui.02004567A425678D"),
        # no LUN field: read as dracut would with an empty one
        ("srv::3262:iqn.2009-06.dracut:t0", "srv:3262", "iqn.2009-06.dracut:t0"),
    ],
)  # fmt: skip
def test_netroot_fields_in_dracut_order(
    tmp_path: Path, spec: str, portal: str, target: str
) -> None:
    written = run_generator(tmp_path, f"netroot=iscsi:{spec}")
    assert starts(written, LOGIN.format(1))[-1] == (
        f'{ISCSIADM} -m node -T "{target}" -p "{portal}" --login'
    )


def test_chap_from_the_command_line_passed_as_written_in_a_root_only_unit(tmp_path: Path) -> None:
    cmdline = f'netroot=iscsi:us%er:pa$s\\w"d:rus:rpw@10.0.0.1::::{ROOT_IQN}'
    written = run_generator(tmp_path, cmdline)
    node = f'{ISCSIADM} -m node -T "{ROOT_IQN}" -p "10.0.0.1:3260"'
    assert starts(written, LOGIN.format(1))[1:-1] == [
        f"{node} -o update -n node.session.auth.authmethod -v CHAP",
        f'{node} -o update -n node.session.auth.username -v "us%%er"',
        f'{node} -o update -n node.session.auth.password -v "pa$$s\\\\w\\"d"',
        f'{node} -o update -n node.session.auth.username_in -v "rus"',
        f'{node} -o update -n node.session.auth.password_in -v "rpw"',
    ]
    unit = tmp_path / "out/run-system" / LOGIN.format(1)
    assert unit.stat().st_mode & 0o777 == 0o600


def test_two_targets_two_logins_one_daemon_and_the_initiator_given(tmp_path: Path) -> None:
    cmdline = (f"netroot=iscsi:a::::{ROOT_IQN} netroot=iscsi:b::::iqn.2009-06.dracut:target1 "
               "netroot=iscsi:nothing rd.iscsi.initiator=iqn.2026-01.test:me")  # fmt: skip
    written = run_generator(tmp_path, cmdline, systemd=256)
    assert (
        '-T "iqn.2009-06.dracut:target1" -p "b:3260" --login'
        in starts(written, LOGIN.format(2))[-1]
    )
    assert f"run-system/{LOGIN.format(3)}" not in written
    assert "no server or target name in netroot=iscsi:nothing" in (tmp_path / "kmsg").read_text()
    assert written["run-bookend/initiatorname.iscsi"] == "InitiatorName=iqn.2026-01.test:me\n"
    assert starts(written, DAEMON_UNIT) == [f"{ISCSID} -i OUT/run-bookend/initiatorname.iscsi"]
    assert "SurviveFinalKillSignal=yes" in unit_lines(written[f"run-system/{DAEMON_UNIT}"])


def test_the_image_initiator_name_is_used_when_there_is_one(tmp_path: Path) -> None:
    (tmp_path / "initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.org.debian:01:x\n")
    written = run_generator(tmp_path, f"netroot=iscsi:a::::{ROOT_IQN}")
    assert starts(written, DAEMON_UNIT) == [f"@{ISCSID} @iscsid -i {tmp_path}/initiatorname.iscsi"]
    assert "run-bookend/initiatorname.iscsi" not in written


def test_firmware_logs_in_to_what_ibft_names(tmp_path: Path) -> None:
    written = run_generator(tmp_path, "root=LABEL=root rd.iscsi.firmware=1")
    assert starts(written, FIRMWARE_UNIT) == [f"{ISCSIADM} -m fw -l"]
    unit = unit_lines(written[f"run-system/{FIRMWARE_UNIT}"])
    assert "Wants=network-online.target modprobe@iscsi_ibft.service" in unit
    assert f"After=network-online.target {DAEMON_UNIT} modprobe@iscsi_ibft.service" in unit
    assert f"normal/initrd-root-device.target.wants/{DAEMON_UNIT}" in written


@pytest.mark.parametrize("cmdline", ["root=UUID=1 rw", "rd.iscsi.firmware=0 netroot=nbd:x:1"])
def test_no_iscsi_writes_nothing(tmp_path: Path, cmdline: str) -> None:
    assert run_generator(tmp_path, cmdline) == {}


def test_detach_step_logs_out_of_each_session_by_number() -> None:
    script = detach_script(ISCSIADM, "/usr/bin/mkdir", "/usr/bin/mount")
    assert f'{ISCSIADM} -m session -r "${{session##*/session}}" -u' in script
    assert "bookend: logging out of iSCSI ${session##*/} to $target (/oldroot $oldroot)" in script


def iscsi_sysroot(root_tree: Path) -> Path:
    for name in ("sbin/iscsid", "sbin/iscsiadm", "sbin/iscsi-iname", "bin/mkdir", "bin/mount"):
        (root_tree / "usr" / name).write_text("")
    (root_tree / "usr/lib/systemd").mkdir(parents=True)
    (root_tree / "usr/lib/systemd/libsystemd-shared-252.so").write_text("")
    (root_tree / "etc/iscsi").mkdir()
    (root_tree / "etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.x:host\n")
    (root_tree / "etc/iscsi/iscsid.conf").write_text("node.session.auth.password = s3cret\n")
    return root_tree


def test_feature_brings_network_tools_modules_and_exitrd_steps(root_tree: Path) -> None:
    values = {"sysroot": str(iscsi_sysroot(root_tree)), "features": ["iscsi"]}
    config = load_config(None, {**values, "mode": "generic"})
    plan = make_plan(config)
    assert plan.features.index("network") < plan.features.index("iscsi")
    files = {g.entry.path: g for g in plan.generated}
    assert files[GENERATOR].entry.mode == 0o755
    assert (
        files[GENERATOR].entry.data
        == generator_script(ISCSID, ISCSIADM, "/usr/sbin/iscsi-iname", 252).encode()
    )
    wanted = {(r.kind, r.name) for r in plan.requests}
    for module in ("iscsi_tcp", "sd_mod", "crc32c"):
        assert (RequestKind.MODULE, module) in wanted
    assert {(RequestKind.EXECUTABLE, ISCSID), (RequestKind.EXECUTABLE, ISCSIADM)} <= wanted
    # Generic: no initiator name of the host's, and never its iscsid.conf by itself.
    assert (RequestKind.PATH, INITIATOR_FILE) not in wanted
    assert CONFIG_FILE not in files
    exitrd = make_exitrd_plan(config, plan)
    assert {DETACH_STEP, STOP_HOOK} <= {g.entry.path for g in exitrd.generated}
    exitrd_wants = {(r.kind, r.name) for r in exitrd.requests}
    for program in (ISCSIADM, "/usr/bin/mkdir", "/usr/bin/mount"):
        assert (RequestKind.EXECUTABLE, program) in exitrd_wants
    hostonly = make_plan(load_config(None, {**values, "mode": "hostonly"}))
    assert (RequestKind.PATH, INITIATOR_FILE) in {(r.kind, r.name) for r in hostonly.requests}


def test_iscsi_without_iscsid_is_an_error(root_tree: Path) -> None:
    config = load_config(None, {"sysroot": str(root_tree), "features": ["iscsi"]})
    with pytest.raises(ConfigError, match="feature iscsi: the sysroot has no iscsid"):
        make_plan(config)


def test_iscsi_config_must_exist(root_tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"iscsi_config: .*/etc/iscsi/chap.conf: no such file"):
        load_config(None, {"sysroot": str(root_tree), "iscsi_config": "/etc/iscsi/chap.conf"})


def test_the_host_iscsi_credentials_stay_out_of_a_directory(root_tree: Path) -> None:
    iscsi_sysroot(root_tree)
    node = root_tree / "etc/iscsi/nodes/iqn.x/10.0.0.1,3260,1/default"
    node.parent.mkdir(parents=True)
    node.write_text("node.session.auth.password = s3cret\n")
    config = load_config(None, {"sysroot": str(root_tree), "files": ["/etc/iscsi"]})
    request = Request(RequestKind.PATH, "/etc/iscsi", "files (test)")
    plan = Plan(features=(), requests=(request,), generated=())
    entries = build_closure(config, plan).entries
    assert "/etc/iscsi/initiatorname.iscsi" in entries
    assert "/etc/iscsi/iscsid.conf" not in entries
    assert not any(path.startswith("/etc/iscsi/nodes/") and "default" in path for path in entries)


def test_iscsi_config_makes_the_image_root_only_and_marked(root_tree: Path, tmp_path: Path) -> None:
    values = {"sysroot": str(iscsi_sysroot(root_tree)), "features": ["iscsi"],
              "iscsi_config": "/etc/iscsi/iscsid.conf", "compress": "gzip",
              "output": str(tmp_path / "x.img")}  # fmt: skip
    config = load_config(None, values)
    conf = next(g for g in make_plan(config).generated if g.entry.path == CONFIG_FILE)
    assert isinstance(conf, Generated) and conf.secret
    assert conf.entry.data == b"node.session.auth.password = s3cret\n"
    assert conf.entry.mode == 0o600
    closure = build_closure(config, Plan(features=(), requests=(), generated=(conf,)))
    assert closure.secrets() == [CONFIG_FILE]
    output = tmp_path / "initrd.img"
    write_image(config, with_manifest(closure), output)
    assert output.stat().st_mode & 0o777 == 0o600
    assert {e.path for e in scan_image(output).entries if e.secret} == {CONFIG_FILE.lstrip("/")}
