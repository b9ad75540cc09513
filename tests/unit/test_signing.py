"""The signing keys of a UKI (bookend.signing): every bad key is one line before any build.

Keys are made by openssl for the module; each case runs the real CLI on a fixture tree
and expects exit status 2, one line naming the source and the setting, and nothing
written. A good pair passes the checks (the fixture has no ukify, which is then the
first thing missing: the keys were accepted).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.signing import signing_argv
from bookend.uki import find_uki_tools
from tests.unit.conftest import make_root_tree

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
KVER = "6.1.0-test"


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}/", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    make_pair(directory, "db")
    make_pair(directory, "other")
    subprocess.run(["openssl", "pkey", "-in", directory / "other.key", "-pubout",
                    "-out", directory / "other.pub"], check=True)  # fmt: skip
    (directory / "text").write_text("not a key\n")
    (directory / "folder").mkdir()
    return directory


def build(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    sysroot = make_root_tree(tmp_path / "sysroot", KVER)
    (tmp_path / "out").mkdir()
    argv = ["build", "--config-root", str(tmp_path), "--generic", "--sysroot", str(sysroot),
            "-o", str(tmp_path / "out/uki.efi"), *flags]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bookend", *argv], capture_output=True, text=True, check=False
    )


CASES = [
    ("missing", ["--uki", "--secureboot-key", "{k}/absent.key", "--secureboot-cert", "{k}/db.crt"],
     "secureboot_key: cannot read {k}/absent.key: No such file or directory"),
    ("unreadable", ["--uki", "--secureboot-key", "{k}/folder", "--secureboot-cert", "{k}/db.crt"],
     "secureboot_key: cannot read {k}/folder: Is a directory"),
    ("not-a-key", ["--uki", "--secureboot-key", "{k}/text", "--secureboot-cert", "{k}/db.crt"],
     "secureboot_key: {k}/text is not a PEM private key without a passphrase"),
    ("not-a-cert", ["--uki", "--secureboot-key", "{k}/db.key", "--secureboot-cert", "{k}/db.key"],
     "secureboot_cert: {k}/db.key is not a PEM X.509 certificate"),
    ("mismatch", ["--uki", "--secureboot-key", "{k}/db.key", "--secureboot-cert", "{k}/other.crt"],
     "secureboot_cert: {k}/other.crt does not belong to secureboot_key {k}/db.key"),
    ("cert-alone", ["--uki", "--secureboot-cert", "{k}/db.crt"],
     "secureboot_cert: needs secureboot_key too"),
    ("not-a-uki", ["--secureboot-key", "{k}/db.key", "--secureboot-cert", "{k}/db.crt"],
     "secureboot_key: only a UKI is signed (--uki)"),
    ("pcr-mismatch",
     ["--uki", "--pcr-private-key", "{k}/db.key", "--pcr-public-key", "{k}/other.pub"],
     "pcr_public_key: {k}/other.pub does not belong to pcr_private_key {k}/db.key"),
    ("pcr-public-alone", ["--uki", "--pcr-public-key", "{k}/other.pub"],
     "pcr_public_key: needs pcr_private_key too"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_key_is_one_line_exit_2_nothing_written(
    keys: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    result = build(tmp_path, *(flag.format(k=keys) for flag in flags))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("bookend: command line: "), lines[0]
    assert message.format(k=keys) in lines[0]
    assert list((tmp_path / "out").iterdir()) == []


def test_matching_keys_pass_the_checks_and_relative_paths_are_made_absolute(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(keys)
    result = build(tmp_path, "--uki", "--secureboot-key", "db.key", "--secureboot-cert",
                   "db.crt", "--pcr-private-key", "other.key")  # fmt: skip
    # The keys were accepted: what stops the build is the fixture's missing ukify.
    assert result.returncode == 2 and "has no ukify" in result.stderr, result.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "bookend", "config", "show", "--config-root", str(tmp_path),
         "--uki", "--secureboot-key", "db.key", "--secureboot-cert", "db.crt",
         "--sysroot", str(tmp_path / "sysroot"), "--generic"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f'secureboot_key = "{keys}/db.key"' in shown, shown


def test_ukify_gets_both_signings_only_when_their_keys_are_given(tmp_path: Path) -> None:
    none = dict.fromkeys(("secureboot_key", "secureboot_cert", "pcr_private_key"), None)
    assert signing_argv(none, None, None) == []
    key, cert, pcr = tmp_path / "k", tmp_path / "c", tmp_path / "p"
    sb = signing_argv({**none, "secureboot_key": key, "secureboot_cert": cert}, None, None)
    assert sb == ["--secureboot-private-key", str(key), "--secureboot-certificate", str(cert)]
    pcr_argv = signing_argv({**none, "pcr_private_key": pcr}, tmp_path, tmp_path / "pub")
    assert pcr_argv == ["--pcr-private-key", str(pcr), "--pcr-public-key",
                        str(tmp_path / "pub"), "--tools", str(tmp_path)]  # fmt: skip


def test_pcr_signing_needs_the_sysroots_systemd_measure(keys: Path, tmp_path: Path) -> None:
    from tests.unit.test_uki import KVER as UKI_KVER
    from tests.unit.test_uki import uki_tree

    sysroot = uki_tree(tmp_path / "sysroot")
    with pytest.raises(ConfigError, match=r"has no systemd-measure \(systemd >= 252\)"):
        find_uki_tools(sysroot, UKI_KVER, {"pcr_private_key": keys / "db.key"})
    # A sysroot's program this machine cannot start (here: not an ELF file) is named.
    measure = sysroot / "usr/lib/systemd/systemd-measure"
    measure.write_text("#!/bin/false\n")
    with pytest.raises(ConfigError, match=f"cannot read {measure}"):
        find_uki_tools(sysroot, UKI_KVER, {"pcr_private_key": keys / "db.key"})
