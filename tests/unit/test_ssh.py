"""Feature ssh on fixture trees: the configuration's keys (and its errors, through the
real CLI), what goes into the image for dropbear and for OpenSSH, the host keys, and the
server unit's place in the boot."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.config import SshServer
from bookend.errors import ConfigError
from bookend.features.base import Generated, RequestKind
from bookend.features.ssh import (
    AUTHORIZED_KEYS,
    DROPBEAR_KEY,
    SSHD_CONFIG,
    UNIT,
    UNLOCK,
    fingerprints,
)
from bookend.plan import Plan, make_plan
from bookend.sshkeys import (
    dropbear_host_key,
    generated_host_key,
    parse_authorized_keys,
    read_openssh_private,
)
from tests.unit.conftest import load_config, make_root_tree

KVER = "6.1.0-test"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"


def keygen(path: Path, comment: str = "someone") -> Path:
    """An ed25519 key pair made by OpenSSH's own ssh-keygen (path and path.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   check=True)  # fmt: skip
    return path


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    """A root tree with both servers (as placeholder files: the plan only finds them)."""
    root = make_root_tree(tmp_path / "sysroot", KVER)
    for program in ("usr/sbin/dropbear", "usr/sbin/sshd"):
        (root / program).write_text("")
    (root / "etc/shells").write_text("/bin/sh\n")
    return root


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """bookend's state directory, where the generated host key is kept."""
    directory = tmp_path / "state"
    monkeypatch.setenv("BOOKEND_STATE_DIR", str(directory))
    return directory


def ssh_plan(sysroot: Path, keys: list[str], **values: object) -> Plan:
    config = load_config(
        None, {"sysroot": str(sysroot), "mode": "generic", "ssh_authorized_keys": keys, **values}
    )
    return make_plan(config)


def generated(plan: Plan) -> dict[str, Generated]:
    return {item.entry.path: item for item in plan.generated}


def text_of(plan: Plan, path: str) -> str:
    data = generated(plan)[path].entry.data
    assert data is not None
    return data.decode()


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, []).extend(value.split())
    return settings


# --- the configured keys ---------------------------------------------------------------


def test_authorized_keys_file_and_inline_key_each_get_the_forced_command(
    sysroot: Path, tmp_path: Path, state: Path
) -> None:
    first = keygen(tmp_path / "first")
    second = Path(f"{keygen(tmp_path / 'second', 'inline one')}.pub").read_text().strip()
    plan = ssh_plan(sysroot, [f"{first}.pub", second])
    assert "ssh" in plan.features and plan.features.index("network") < plan.features.index("ssh")
    lines = text_of(plan, AUTHORIZED_KEYS).splitlines()
    options = f'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="{UNLOCK}"'
    assert lines == [
        f"{options} {Path(f'{first}.pub').read_text().strip()}",
        f"{options} {second}",
    ]
    assert generated(plan)[AUTHORIZED_KEYS].entry.mode == 0o600
    assert generated(plan)["/root/.ssh"].entry.mode == 0o700


def test_ssh_table_in_toml_is_the_same_setting(sysroot: Path, tmp_path: Path, state: Path) -> None:
    key = keygen(tmp_path / "k")
    toml = tmp_path / "bookend.toml"
    toml.write_text(f'[ssh]\nauthorized_keys = ["{key}.pub"]\nserver = "openssh"\n')
    config = load_config(toml, {"sysroot": str(sysroot), "mode": "generic"})
    assert config.ssh_authorized_keys == (f"{key}.pub",)
    assert config.ssh_server is SshServer.OPENSSH
    dotted = tmp_path / "dotted.toml"
    dotted.write_text(f'ssh.authorized_keys = ["{key}.pub"]\n')
    config = load_config(dotted, {"sysroot": str(sysroot), "mode": "generic"})
    assert config.ssh_authorized_keys == (f"{key}.pub",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ssh-ed25519\n", "line 1: a ssh-ed25519 key without its base64 part"),
        ("# mine\nssh-ed25519 AAAA!!\n", "line 2: the ssh-ed25519 key's base64 part is damaged"),
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA==\n", "line 1: the base64 part is not a ssh-rsa key"),
        ('command="x" ssh-ed25519 AAAA\n', "line 1: options before the key are not taken"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n", "line 1: '-----BEGIN' is not an SSH key type"),
    ],
)
def test_malformed_key_lines_name_the_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="^keys " + problem.replace("(", r"\(")):
        parse_authorized_keys(text, "keys")


def run_build(tmp_path: Path, sysroot: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    for directory in ("out", "no-conf"):
        (tmp_path / directory).mkdir(exist_ok=True)
    argv = ["build", "--config-root", str(tmp_path / "no-conf"), "--generic",
            "--sysroot", str(sysroot), "-o", str(tmp_path / "out/i.img"), *flags]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "bookend", *argv],
                          capture_output=True, text=True, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (None, "{file}: no such file"),
        ("", "{file}: holds no SSH public key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n", "{file} line 1: the ssh-ed25519 key is cut short"),
        ("ssh-dss AAAAB3NzaC1kc3M= old\n", "{file} line 1: 'ssh-dss' is not an SSH key type"),
        ("relative", "'keys' is neither an SSH public key nor an absolute path"),
    ],
    ids=["missing", "empty", "truncated", "dsa", "relative-path"],
)
def test_bad_key_file_is_one_line_exit_2_nothing_written(
    tmp_path: Path, sysroot: Path, state: Path, content: str | None, phrase: str
) -> None:
    key_file = tmp_path / "keys"
    if content not in (None, "relative"):
        key_file.write_text(content or "")
    named = "keys" if content == "relative" else str(key_file)
    result = run_build(tmp_path, sysroot, "--ssh-authorized-keys", named)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bookend: command line: ssh_authorized_keys: "), lines[0]
    assert phrase.format(file=key_file) in lines[0]
    assert list((tmp_path / "out").iterdir()) == []
    assert not state.exists()


def test_no_server_in_the_sysroot_is_one_line_exit_2(tmp_path: Path, state: Path) -> None:
    bare = make_root_tree(tmp_path / "bare", KVER)
    key = keygen(tmp_path / "k")
    result = run_build(tmp_path, bare, "--ssh-authorized-keys", f"{key}.pub")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"bookend: default: ssh_server: the sysroot {bare} has neither dropbear nor sshd"
    ]
    assert list((tmp_path / "out").iterdir()) == []


# --- what goes into the image ----------------------------------------------------------


def test_dropbear_is_preferred_and_gets_a_converted_secret_host_key(
    sysroot: Path, tmp_path: Path, state: Path
) -> None:
    plan = ssh_plan(sysroot, [f"{keygen(tmp_path / 'k')}.pub"])
    entries = generated(plan)
    unit = unit_settings(text_of(plan, UNIT_PATH))
    assert unit["ExecStart"][0] == "/usr/sbin/dropbear"
    assert {"-s", "-j", "-k", "-F"} <= set(unit["ExecStart"])
    assert unit["ExecStart"][-2:] == ["-r", DROPBEAR_KEY]
    key = entries[DROPBEAR_KEY]
    assert key.secret and key.entry.mode == 0o600
    kept = read_openssh_private((state / "ssh/ssh_host_ed25519_key").read_bytes(), "kept")
    assert key.entry.data == dropbear_host_key(kept, "kept")
    assert SSHD_CONFIG not in entries  # nothing of OpenSSH's
    wanted = {(r.kind, r.name) for r in plan.requests}
    assert (RequestKind.EXECUTABLE, "/usr/bin/systemd-tty-ask-password-agent") in wanted
    assert (RequestKind.PATH, "/etc/shells") in wanted
    # A remote answer may come after systemd's 90 s wait for the root device.
    assert text_of(plan, "/etc/systemd/system.conf.d/bookend-ssh-wait.conf").splitlines() == [
        "[Manager]",
        "DefaultDeviceTimeoutSec=infinity",
    ]


def test_openssh_gets_its_config_user_and_host_key(
    sysroot: Path, tmp_path: Path, state: Path
) -> None:
    plan = ssh_plan(sysroot, [f"{keygen(tmp_path / 'k')}.pub"], ssh_server="openssh")
    entries = generated(plan)
    unit = unit_settings(text_of(plan, UNIT_PATH))
    assert unit["ExecStart"] == ["/usr/sbin/sshd", "-D", "-e", "-f", SSHD_CONFIG]
    assert unit["ExecStartPre"] == ["systemd-sysusers", "/usr/lib/sysusers.d/bookend-sshd.conf"]
    assert unit["RuntimeDirectory"] == ["sshd"]
    sshd = dict(line.split(maxsplit=1) for line in text_of(plan, SSHD_CONFIG).splitlines()[1:])
    assert sshd["HostKey"] == "/etc/ssh/ssh_host_ed25519_key"
    assert sshd["ForceCommand"] == UNLOCK
    assert sshd["PasswordAuthentication"] == "no" and sshd["UsePAM"] == "no"
    assert sshd["PermitRootLogin"] == "forced-commands-only"
    key = entries["/etc/ssh/ssh_host_ed25519_key"]
    assert key.secret and key.entry.data == (state / "ssh/ssh_host_ed25519_key").read_bytes()
    assert DROPBEAR_KEY not in entries


def test_the_host_key_is_made_once_and_kept(tmp_path: Path) -> None:
    first = generated_host_key(tmp_path / "keys")
    again = generated_host_key(tmp_path / "keys")
    assert first == again
    assert (tmp_path / "keys/ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["ssh_host_ed25519_key"]


def test_host_keys_of_the_sysroot_and_their_fingerprints(sysroot: Path, tmp_path: Path) -> None:
    (sysroot / "etc/ssh").mkdir()
    host_key = keygen(sysroot / "etc/ssh/ssh_host_ed25519_key", "root@host")
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f",
                    sysroot / "etc/ssh/ssh_host_ecdsa_key"], check=True)  # fmt: skip
    client = f"{keygen(tmp_path / 'k')}.pub"
    openssh = ssh_plan(sysroot, [client], ssh_server="openssh", ssh_host_keys="host")
    entries = generated(openssh)
    assert entries["/etc/ssh/ssh_host_ed25519_key"].entry.data == host_key.read_bytes()
    assert entries["/etc/ssh/ssh_host_ecdsa_key"].secret
    printed = fingerprints(item.entry for item in openssh.generated)
    for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key"):
        listed = subprocess.run(["ssh-keygen", "-lf", sysroot / "etc/ssh" / name],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert any(fingerprint.split()[1] in listed for fingerprint in printed), listed
    # dropbear takes the ed25519 one, in its own format.
    dropbear = ssh_plan(sysroot, [client], ssh_host_keys="host")
    assert [fp.split()[0] for fp in fingerprints(i.entry for i in dropbear.generated)] == [
        "ssh-ed25519"
    ]


@pytest.mark.skipif(not shutil.which("dropbearconvert"), reason="needs dropbear-bin")
def test_dropbear_key_is_what_dropbearconvert_makes(tmp_path: Path) -> None:
    key = keygen(tmp_path / "k")
    subprocess.run(["dropbearconvert", "openssh", "dropbear", key, tmp_path / "k.dropbear"],
                   check=True, capture_output=True)  # fmt: skip
    ours = dropbear_host_key(read_openssh_private(key.read_bytes(), str(key)), str(key))
    assert ours == (tmp_path / "k.dropbear").read_bytes()


# --- the unit's place in the boot ------------------------------------------------------


def test_server_starts_with_the_network_and_stops_before_switch_root(
    sysroot: Path, tmp_path: Path, state: Path
) -> None:
    plan = ssh_plan(sysroot, [f"{keygen(tmp_path / 'k')}.pub"])
    unit = unit_settings(text_of(plan, UNIT_PATH))
    # Not after sysinit.target: a passphrase prompt holds that up, and the server answers it.
    assert unit["DefaultDependencies"] == ["no"]
    assert {"network.target", "systemd-networkd.service"} <= set(unit["After"])
    assert "network-online.target" not in unit["After"] + unit.get("Wants", [])
    assert {"initrd-switch-root.target", "shutdown.target"} <= set(unit["Conflicts"])
    assert {"initrd-switch-root.target", "shutdown.target"} <= set(unit["Before"])
    assert unit["KillMode"] == ["control-group"]  # the sessions go with the server
    link = generated(plan)[f"/etc/systemd/system/initrd.target.wants/{UNIT}"].entry
    assert link.target == f"../{UNIT}"


def test_login_command_answers_pending_requests(tmp_path: Path) -> None:
    """The login script, run with a fake agent and a request directory of its own."""
    plan_text = generated_script()
    asks = tmp_path / "ask-password"
    asks.mkdir()
    (asks / "ask.1").write_text("")
    agent = tmp_path / "agent"
    agent.write_text(f'#!/bin/sh\necho "agent $*" >> {tmp_path}/log\nrm -f {asks}/ask.*\n')
    agent.chmod(0o755)
    script = plan_text.replace("/run/systemd/ask-password", str(asks))
    script = script.replace("/usr/bin/systemd-tty-ask-password-agent", str(agent))
    script = script.replace("-lt 60", "-lt 2")  # a short idle limit for the test
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert (tmp_path / "log").read_text() == "agent --query\n"
    assert "answering the boot's passphrase requests" in result.stdout


def generated_script() -> str:
    from bookend.features.ssh import UNLOCK_SCRIPT

    return UNLOCK_SCRIPT


def test_misspelt_key_in_the_ssh_table_is_named(sysroot: Path, tmp_path: Path) -> None:
    toml = tmp_path / "bookend.toml"
    toml.write_text('[ssh]\nservr = "dropbear"\n')
    with pytest.raises(ConfigError, match=r"bookend.toml: ssh_servr: unknown key.*ssh_server"):
        load_config(toml, {"sysroot": str(sysroot), "mode": "generic"})


def test_feature_without_keys_is_one_line_exit_2(
    tmp_path: Path, sysroot: Path, state: Path
) -> None:
    result = run_build(tmp_path, sysroot, "--add-feature", "ssh")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "bookend: command line: features: ssh needs ssh_authorized_keys (no key would log in)"
    ]
    assert list((tmp_path / "out").iterdir()) == []
    assert not state.exists()  # no host key made for an image that is not built
