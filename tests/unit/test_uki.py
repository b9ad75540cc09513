"""`bookend build --uki`: what it needs from the sysroot, found before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.errors import ConfigError
from bookend.uki import STUB_DIR, UkiTools, find_uki_tools, ukify_argv
from harness.images import bookend
from tests.unit.conftest import load_config, make_root_tree

KVER = "6.12.0-test"
# The fixture's systemd is no ELF file, so every architecture's stub is looked for.
STUB_PATH = f"{STUB_DIR}/linuxx64.efi.stub"


def uki_tree(root: Path, *, ukify: bool = True, stub: bool = True, kernel: bool = True) -> Path:
    make_root_tree(root, KVER)
    if ukify:
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin/ukify").write_text("#!/usr/bin/python3\n")
        (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
        # An absolute link, as a package may ship it: it must resolve inside the sysroot.
        (root / "usr/lib/systemd/ukify").symlink_to("/usr/bin/ukify")
    if stub:
        (root / STUB_PATH.lstrip("/")).parent.mkdir(parents=True)
        (root / STUB_PATH.lstrip("/")).write_bytes(b"MZ")
    if kernel:
        (root / "boot").mkdir()
        (root / f"boot/vmlinuz-{KVER}").write_bytes(b"MZ")
    return root


def test_everything_is_taken_from_the_sysroot(tmp_path: Path) -> None:
    root = uki_tree(tmp_path)
    tools = find_uki_tools(root, KVER)
    assert tools.ukify == root / "usr/bin/ukify"
    assert tools.stub == root / STUB_PATH.lstrip("/")
    assert tools.kernel == root / f"boot/vmlinuz-{KVER}"
    assert tools.os_release == root / "usr/lib/os-release"


def test_a_kernel_beside_its_modules_is_found_too(tmp_path: Path) -> None:
    root = uki_tree(tmp_path, kernel=False)
    (root / f"usr/lib/modules/{KVER}/vmlinuz").write_bytes(b"MZ")
    assert find_uki_tools(root, KVER).kernel == root / f"usr/lib/modules/{KVER}/vmlinuz"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("ukify", "has no ukify (install systemd-ukify, systemd >= 253)"),
        ("stub", f"has no EFI stub {STUB_PATH}, {STUB_DIR}/linuxia32.efi.stub, "),
        ("kernel", f"has no kernel image for {KVER}; looked for /boot/vmlinuz-{KVER}"),
    ],
)
def test_what_is_missing_is_named(tmp_path: Path, missing: str, message: str) -> None:
    root = uki_tree(tmp_path, **{missing: False})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_uki_tools(root, KVER)


def test_no_ukify_fails_before_building_with_one_line(tmp_path: Path) -> None:
    # The tree has no systemd either: the build would fail on that if it had started.
    root = uki_tree(tmp_path / "root", ukify=False)
    output = tmp_path / "uki.efi"
    result = bookend("build", "--sysroot", str(root), "--uki", "-o", str(output), check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"bookend: --uki: sysroot {root} has no ukify (install systemd-ukify, systemd >= 253); "
        "looked for /usr/lib/systemd/ukify, /usr/bin/ukify\n"
    )
    assert list(tmp_path.iterdir()) == [root]


def test_ukify_gets_the_sysroots_os_release_and_the_kernel_version(tmp_path: Path) -> None:
    tools = UkiTools(Path("/s/ukify"), Path("/s/stub"), Path("/s/vmlinuz"), Path("/s/os-release"))
    argv = ukify_argv(tools, KVER, Path("/t/initrd"), "root=/dev/vda rw", Path("/t/uki"))
    pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[1:3] == ["/s/ukify", "build"]
    assert pairs == {
        "--linux": "/s/vmlinuz",
        "--initrd": "/t/initrd",
        "--stub": "/s/stub",
        "--uname": KVER,
        "--os-release": "@/s/os-release",
        "--cmdline": "root=/dev/vda rw",
        "--output": "/t/uki",
    }


def test_cmdline_without_uki_is_bad_input(tmp_path: Path) -> None:
    root = make_root_tree(tmp_path / "root", KVER)
    with pytest.raises(ConfigError, match="cmdline: only a UKI carries a command line"):
        load_config(None, {"sysroot": str(root), "cmdline": "quiet"})


def test_a_uki_is_named_as_one_by_default(tmp_path: Path) -> None:
    root = make_root_tree(tmp_path / "root", KVER)
    config = load_config(None, {"sysroot": str(root), "uki": True}, cwd=lambda: tmp_path)
    assert config.output == tmp_path / f"bookend-uki-{KVER}.efi"
    assert config.exitrd_output == tmp_path / f"exitrd.img-{KVER}"


def test_an_interpreter_without_pefile_is_told_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "pefile" else real(name)
    )
    with pytest.raises(ConfigError, match="ukify needs the Python module pefile"):
        find_uki_tools(uki_tree(tmp_path), KVER)
