"""Feature signed-extensions: what switches it on (a UKI whose systemd reads
/.extra/sysext, verity_certificates), what it puts into the plan (the merge services,
dm-verity, libcryptsetup, the certificates at /etc/verity.d/NAME.crt), and the one-line
errors, on fixture sysroots of real ELF files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.errors import ConfigError, SysrootError
from bookend.features.base import Generated, RequestKind
from bookend.plan import Plan, make_plan
from harness.secureboot import make_key_pair
from tests.unit.conftest import load_config

from .elftree import compile_c, install_libc, shared_library

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
UNITS = "/usr/lib/systemd/system"
WANTS = "/etc/systemd/system/sysinit.target.wants"


def systemd_tree(root: Path, version: int, *, cryptsetup: bool = True) -> Path:
    """A sysroot with systemd VERSION (by its private library's name), its sysext and
    confext services, and libcryptsetup where the manager's loader finds it."""
    install_libc(root)
    compile_c("int main(void) { return 0; }\n", root / "usr/lib/systemd/systemd")
    (root / f"usr/lib/systemd/libsystemd-shared-{version}.so").write_bytes(b"")
    (root / UNITS.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for unit in ("systemd-sysext.service", "systemd-confext.service"):
        (root / UNITS.lstrip("/") / unit).write_text("[Service]\nExecStart=true\n")
    if cryptsetup:
        shared_library(root, MULTIARCH, "libcryptsetup.so.12", "int f(void) { return 0; }\n")
    return root


def plan_of(root: Path, **values: object) -> Plan:
    return make_plan(load_config(None, {"sysroot": str(root), **values}))


def generated(plan: Plan) -> dict[str, Generated]:
    return {g.entry.path: g for g in plan.generated}


@pytest.mark.parametrize(
    ("version", "uki", "on"),
    [(257, True, True), (254, True, True), (252, True, False), (257, False, False)],
)
def test_on_by_itself_for_a_uki_whose_systemd_reads_the_stubs_extensions(
    root_tree: Path, version: int, uki: bool, on: bool
) -> None:
    plan = plan_of(systemd_tree(root_tree, version), uki=uki)
    assert ("signed-extensions" in plan.features) is on
    entries = generated(plan)
    for unit in ("systemd-sysext.service", "systemd-confext.service"):
        assert (f"{WANTS}/{unit}" in entries) is on
    if on:
        requests = {(r.kind, r.name) for r in plan.requests}
        modules = {(RequestKind.MODULE, m) for m in ("loop", "squashfs", "dm_mod", "dm_verity")}
        assert modules <= requests
        # Found as the manager's loader would (the path it names, links and all).
        found = {n for k, n in requests if k == RequestKind.PATH and "libcryptsetup" in n}
        assert len(found) == 1 and found.pop().endswith("/libcryptsetup.so.12")
        assert "dm" in plan.features  # device-mapper's udev rules for /dev/mapper
        load = entries["/etc/modules-load.d/bookend-signed-extensions.conf"].entry.data
        assert load == b"dm_mod\ndm_verity\n"


def test_a_uki_without_libcryptsetup_is_left_alone(root_tree: Path) -> None:
    plan = plan_of(systemd_tree(root_tree, 257, cryptsetup=False), uki=True)
    assert "signed-extensions" not in plan.features


def test_certificates_go_to_etc_verity_d(root_tree: Path, tmp_path: Path) -> None:
    first = make_key_pair(tmp_path / "a", "vendor").cert
    second = make_key_pair(tmp_path / "b", "mine").cert.rename(tmp_path / "b/mine.pem")
    root = systemd_tree(root_tree, 257)
    plan = plan_of(root, verity_certificates=[str(first), str(second)])
    entries = generated(plan)
    assert entries["/etc/verity.d/vendor.crt"].entry.source == first
    assert entries["/etc/verity.d/mine.crt"].entry.source == second
    assert "verity_certificates (command line)" in entries["/etc/verity.d/mine.crt"].reason
    # The sysroot's own trusted certificates, where it has them.
    requests = {(r.kind, r.name, r.optional) for r in plan.requests}
    for directory in ("/etc/verity.d", "/usr/lib/verity.d", "/usr/local/lib/verity.d"):
        assert (RequestKind.PATH, directory, True) in requests


def test_certificates_without_libcryptsetup_is_one_line(root_tree: Path, tmp_path: Path) -> None:
    cert = make_key_pair(tmp_path, "vendor").cert
    root = systemd_tree(root_tree, 257, cryptsetup=False)
    with pytest.raises(SysrootError) as error:
        plan_of(root, verity_certificates=[str(cert)])
    assert str(error.value) == (
        "signed-extensions: the sysroot has no libcryptsetup.so.12, which systemd loads to "
        "set up a Verity extension image (Debian: libcryptsetup12)"
    )


def test_bad_certificates_are_one_line_each(root_tree: Path, tmp_path: Path) -> None:
    good = make_key_pair(tmp_path / "a", "same").cert
    again = make_key_pair(tmp_path / "b", "same").cert
    key = make_key_pair(tmp_path / "c", "key").key
    hidden = make_key_pair(tmp_path / "d", ".hidden").cert
    missing = tmp_path / "absent.crt"
    items = [str(good), str(again), str(key), str(hidden), str(missing)]
    with pytest.raises(ConfigError) as error:
        load_config(None, {"sysroot": str(root_tree), "verity_certificates": items})
    # All at once, as every configuration problem is.
    assert str(error.value).split("; ") == [
        f"command line: verity_certificates: {again}: /etc/verity.d/same.crt, as is {good}: "
        "rename one",
        f"command line: verity_certificates: {key} is not a PEM X.509 certificate",
        f"command line: verity_certificates: {hidden}: a hidden name, which systemd skips "
        "in verity.d",
        f"command line: verity_certificates: cannot read {missing}: No such file or directory",
    ]
