"""Issue 17, part A: embedded credentials, initrd extensions, the debug feature and the
rd.break units: what the plan puts into the image, and the one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bookend.archive import EntryKind
from bookend.cli import vocabularies
from bookend.config import HOOK_POINTS, Config
from bookend.errors import ConfigError, SysrootError
from bookend.features import ALL, DEFAULT
from bookend.features.base import Generated, RequestKind
from bookend.features.credentials import TPM2_SEALED as TPM2_KEYS
from bookend.features.credentials import sealing_id
from bookend.features.emergency import BARE_BREAK
from bookend.plan import Plan, make_plan
from bookend.resolve import configure
from harness.treecopy import squashfs_of
from tests.unit.elftree import compile_c
from tests.unit.test_exitrd_additions import put
from tests.unit.test_tokens import token_root

UNITS = "/etc/systemd/system"
# The fixture tree's os-release says ID=fixture, no VERSION_ID.
RELEASE = "ID=fixture\nSYSEXT_SCOPE=initrd\n"


def config_of(values: dict[str, object]) -> Config:
    return configure(None, values, vocabularies(ALL))


def generated(plan: Plan) -> dict[str, Generated]:
    return {g.entry.path: g for g in plan.generated}


def squashfs_extension(directory: Path, name: str, release: str = RELEASE) -> Path:
    tree = directory / f"{name}-tree"
    put(tree, f"/usr/lib/extension-release.d/extension-release.{name}", release)
    put(tree, "/usr/bin/hello", "#!/bin/sh\necho hello\n", 0o755)
    image = directory / f"{name}.raw"
    return squashfs_of(tree, image)


# --- credentials -------------------------------------------------------------


def test_credentials_are_embedded_secret_in_the_credential_stores(
    root_tree: Path, tmp_path: Path
) -> None:
    plain = put(tmp_path, "/plain", "value\n")
    # Sealed by the host key: no TPM2 needed.
    encrypted = put(tmp_path, "/token.cred", f"{HOST_SEALED}\n")
    config = config_of({"sysroot": str(root_tree),
                        "credentials": [f"db.password={plain}", f"token={encrypted}"]})  # fmt: skip
    plan = make_plan(config)
    assert "credentials" in plan.features
    entries = generated(plan)
    for path in ("/etc/credstore/db.password", "/etc/credstore.encrypted/token"):
        assert entries[path].secret and entries[path].entry.mode == 0o600, path
        assert entries[path].reason.startswith("credentials (command line): credential ")
    assert entries["/etc/credstore/db.password"].entry.source == plain
    for store in ("/etc/credstore", "/etc/credstore.encrypted"):
        assert entries[store].entry.kind is EntryKind.DIRECTORY
        assert entries[store].entry.mode == 0o700
    assert not [r for r in plan.requests if r.reason.startswith("credentials:")]


# The headers systemd-creds 257 wrote (base64): --with-key=host, and --with-key=tpm2.
HOST_SEALED = "Whxqht+dQJax1aZeCGLxmiAAAAABAAAADAAAAA=="
TPM2_SEALED = "DHzAexF2RZGcSwvqCLwg/iAAAAABAAAADAAAABAAAAC139t"


def test_sealing_id_from_base64_text_or_raw_bytes() -> None:
    tpm2 = bytes.fromhex("0c7cc07b117645919c4b0bea08bc20fe")
    assert sealing_id(TPM2_SEALED.encode()) == tpm2
    assert sealing_id(tpm2 + b"\x20\0\0\0\x01\0\0\0\x0c\0\0\0") == tpm2
    assert sealing_id(HOST_SEALED.encode()) not in TPM2_KEYS


def test_tpm2_sealed_credential_brings_the_tpm(root_tree: Path, tmp_path: Path) -> None:
    root = token_root(root_tree)  # the tss2 libraries, and a libc
    compile_c("int main(void) { return 0; }\n", root / "usr/lib/systemd/systemd")
    sealed = put(tmp_path, "/secret.cred", TPM2_SEALED + "\n")
    plan = make_plan(config_of({"sysroot": str(root), "credentials": [f"secret={sealed}"]}))
    requests = {(r.kind, r.name) for r in plan.requests if r.reason.startswith("credentials:")}
    assert (RequestKind.DRIVER_CLASS, "tpm") in requests
    assert (RequestKind.UNIT, "tpm2.target") in requests
    libraries = {Path(name).name for kind, name in requests if kind is RequestKind.PATH}
    assert libraries == {"libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0",
                         "libtss2-tcti-device.so.0"}  # fmt: skip
    assert generated(plan)["/etc/credstore.encrypted/secret"].secret


def test_tpm2_sealed_credential_without_tss2_is_one_line(root_tree: Path, tmp_path: Path) -> None:
    sealed = put(tmp_path, "/secret.cred", TPM2_SEALED + "\n")
    with pytest.raises(SysrootError) as error:
        make_plan(config_of({"sysroot": str(root_tree), "credentials": [f"secret={sealed}"]}))
    assert str(error.value) == (
        "credentials: secret is sealed by a TPM2, and the sysroot has no libtss2-esys.so.0, "
        "which systemd loads to decrypt it"
    )


def fw_cfg_requests(plan: Plan) -> list[tuple[str, bool]]:
    return [(r.name, r.optional) for r in plan.requests
            if r.kind is RequestKind.MODULE and r.reason == "feature credentials"]  # fmt: skip


def test_the_feature_brings_qemu_fw_cfg_for_fw_cfg_credentials(
    root_tree: Path, tmp_path: Path
) -> None:
    """PID 1 loads qemu_fw_cfg itself before it imports QEMU's fw_cfg credentials: the
    module comes with the feature, optional (built in or absent needs nothing); the
    feature named alone brings it with no credential store."""
    plain = put(tmp_path, "/plain", "value\n")
    embedded = make_plan(config_of({"sysroot": str(root_tree), "credentials": [f"a={plain}"]}))
    named = make_plan(config_of({"sysroot": str(root_tree), "features": ["credentials"]}))
    for plan in (embedded, named):
        assert "credentials" in plan.features
        assert fw_cfg_requests(plan) == [("qemu_fw_cfg", True)]
    assert not any(path.startswith("/etc/credstore") for path in generated(named))
    assert fw_cfg_requests(make_plan(config_of({"sysroot": str(root_tree)}))) == []


def test_no_credentials_no_feature(root_tree: Path) -> None:
    plan = make_plan(config_of({"sysroot": str(root_tree)}))
    assert "credentials" not in plan.features and "extensions" not in plan.features
    assert not any(path.startswith("/etc/credstore") for path in generated(plan))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nofile", "credentials: 'nofile' is not NAME=FILE"),
        ("a/b=/x", "credentials: 'a/b' is not a credential name (letters, digits and _.:@+-)"),
        ("..=/x", "credentials: '..' is not a credential name (letters, digits and _.:@+-)"),
        ("gone={tmp}/absent", "credentials: gone: {tmp}/absent: no such file"),
        ("dir={tmp}", "credentials: dir: {tmp}: not a file"),
    ],
)
def test_bad_credentials_are_one_line_naming_the_key(
    root_tree: Path, tmp_path: Path, item: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config_of({"sysroot": str(root_tree), "credentials": [item.format(tmp=tmp_path)]})
    assert str(error.value) == "command line: " + message.format(tmp=tmp_path)


# --- extensions --------------------------------------------------------------


def test_sysext_image_goes_in_whole_with_the_merge_service(root_tree: Path, tmp_path: Path) -> None:
    image = squashfs_extension(tmp_path, "hello")
    plan = make_plan(config_of({"sysroot": str(root_tree), "sysexts": [str(image)]}))
    entries = generated(plan)
    assert entries["/etc/extensions/hello.raw"].entry.source == image
    link = entries[f"{UNITS}/sysinit.target.wants/systemd-sysext.service"].entry
    assert link.target == "../systemd-sysext.service"
    requests = {(r.kind, r.name) for r in plan.requests}
    assert (RequestKind.UNIT, "systemd-sysext.service") in requests
    assert {(RequestKind.MODULE, m) for m in ("loop", "squashfs", "overlay")} <= requests
    assert "/usr/bin/hello" not in entries  # merged at boot, not at build time


@pytest.mark.parametrize(
    ("release", "message"),
    [
        ("ID=fixture\n", "SYSEXT_SCOPE is 'system portable'; the initrd is an initrd, "
                         "so it must list initrd"),
        ("ID=other\nSYSEXT_SCOPE=initrd\n", "ID=other, but the initrd's os-release says "
                                            "ID=fixture (or _any)"),
    ],
)  # fmt: skip
def test_sysext_that_does_not_fit_the_initrd_is_refused_naming_it(
    root_tree: Path, tmp_path: Path, release: str, message: str
) -> None:
    image = squashfs_extension(tmp_path, "hello", release)
    config = config_of({"sysroot": str(root_tree), "sysexts": [str(image)]})
    with pytest.raises(ConfigError) as error:
        make_plan(config)
    assert str(error.value) == (
        f"{image}: usr/lib/extension-release.d/extension-release.hello: {message}"
    )


def test_sysext_directory_is_refused(root_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        config_of({"sysroot": str(root_tree), "sysexts": [str(tmp_path)]})
    assert str(error.value) == f"command line: sysexts: {tmp_path}: not an image file"


def test_confext_needs_systemd_confext(root_tree: Path, tmp_path: Path) -> None:
    image = put(tmp_path, "/conf.raw", "x")
    with pytest.raises(ConfigError) as error:
        config_of({"sysroot": str(root_tree), "confexts": [str(image)]})
    assert str(error.value) == (
        "command line: confexts: the sysroot's systemd has no systemd-confext.service "
        "(systemd 254 and later)"
    )


# --- debug shell and rd.break ------------------------------------------------


def test_debug_shell_only_when_asked(root_tree: Path) -> None:
    assert "debug" not in DEFAULT
    assert ALL["debug"].units == ("debug-shell.service",)


@pytest.mark.parametrize(("access", "force"), [("locked", False), ("unlocked", True)])
def test_rd_break_units_wait_at_each_point_with_sulogin(
    root_tree: Path, access: str, force: bool
) -> None:
    plan = make_plan(config_of({"sysroot": str(root_tree), "emergency_shell": access}))
    entries = generated(plan)
    for point in HOOK_POINTS:
        unit = f"bookend-break-{point}.service"
        data = entries[f"{UNITS}/{unit}"].entry.data
        assert data is not None
        text = data.decode()
        assert f"ConditionKernelCommandLine=rd.break={point}\n" in text
        assert f"bookend-hook-{point}-1.service" in text  # before the point's hooks
        assert ("ExecStart=-sulogin --force\n" in text) is force
        # Said through the kernel's log: sulogin flushes what the tty has not sent yet.
        said = f"ExecStartPre=-/bin/sh -c \"echo '<3>bookend: rd.break={point}: stopped;"
        assert said in text and "' > /dev/kmsg\"\n" in text
        assert entries[f"{UNITS}/initrd.target.wants/{unit}"].entry.target == f"../{unit}"
    mount = entries[f"{UNITS}/bookend-break-pre-mount.service"].entry.data
    assert mount is not None and b"Before=systemd-fsck-root.service sysroot.mount " in mount


@pytest.mark.parametrize(
    ("cmdline", "status"),
    [("quiet rd.break", 0), ("rd.break=pre-mount", 1), ("rd.breakx", 1), ("ro", 1)],
)
def test_bare_rd_break_is_told_from_rd_break_point(
    tmp_path: Path, cmdline: str, status: int
) -> None:
    """The bare unit's check, run by the build host's sh on a command line of our own."""
    proc_cmdline = put(tmp_path, "/cmdline", cmdline + "\n")
    script = put(tmp_path, "/check", BARE_BREAK.replace("/proc/cmdline", str(proc_cmdline)))
    assert subprocess.run(["sh", str(script)], check=False).returncode == status
