"""bookend.firmware on fixture trees laid out like /lib/firmware."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookend.errors import SysrootError
from bookend.firmware import (
    expand_firmware_pattern,
    find_firmware,
    firmware_search_dirs,
    host_firmware_class_path,
    is_pattern,
)
from bookend.sysroot import Sysroot

from .conftest import make_root_tree

KVER = "6.1.0-test"
DEFAULT_DIRS = [
    f"/lib/firmware/updates/{KVER}",
    "/lib/firmware/updates",
    f"/lib/firmware/{KVER}",
    "/lib/firmware",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root_tree(tmp_path / "sysroot", KVER)


def put(root: Path, relpath: str, content: bytes = b"firmware") -> Path:
    """A file at usr/lib/firmware/relpath (what /lib/firmware/relpath resolves to)."""
    path = root / "usr/lib/firmware" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def find(root: Path, name: str, extra: str | None = None) -> str | None:
    return find_firmware(Sysroot(root), name, firmware_search_dirs(KVER, extra))


def test_search_dirs_in_kernel_order() -> None:
    assert firmware_search_dirs(KVER, None) == DEFAULT_DIRS
    assert firmware_search_dirs(KVER, "") == DEFAULT_DIRS  # the kernel skips it when empty
    assert firmware_search_dirs(KVER, "/opt/fw") == ["/opt/fw", *DEFAULT_DIRS]


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        # Every directory holds the name: the first directory wins.
        (["updates/KVER/x.bin", "updates/x.bin", "KVER/x.bin", "x.bin"], "updates/KVER/x.bin"),
        (["updates/x.bin", "KVER/x.bin", "x.bin"], "updates/x.bin"),
        (["KVER/x.bin", "x.bin"], "KVER/x.bin"),
        # A plain file anywhere beats a compressed one in an earlier directory: each
        # suffix is a pass of its own over all directories.
        (["updates/KVER/x.bin.zst", "updates/x.bin.xz", "x.bin"], "x.bin"),
        # .zst is tried before .xz, again across all directories.
        (["updates/x.bin.xz", "x.bin.zst"], "x.bin.zst"),
        (["x.bin.xz", "x.bin.zst"], "x.bin.zst"),
        (["updates/x.bin.xz"], "updates/x.bin.xz"),
    ],
)
def test_find_firmware_follows_the_kernel_order(
    root: Path, present: list[str], winner: str
) -> None:
    for relpath in present:
        put(root, relpath.replace("KVER", KVER))
    assert find(root, "x.bin") == "/lib/firmware/" + winner.replace("KVER", KVER)


def test_names_with_subdirectories(root: Path) -> None:
    put(root, "intel/ibt-12-16.sfi.xz")
    put(root, "rtl_nic/rtl8168h-2.fw")
    assert find(root, "intel/ibt-12-16.sfi") == "/lib/firmware/intel/ibt-12-16.sfi.xz"
    assert find(root, "rtl_nic/rtl8168h-2.fw") == "/lib/firmware/rtl_nic/rtl8168h-2.fw"


def test_missing_firmware_is_none(root: Path) -> None:
    put(root, "other.bin")
    assert find(root, "absent.bin") is None
    assert find(root, "sub/absent.bin") is None


def test_empty_files_and_directories_do_not_count(root: Path) -> None:
    # The kernel refuses to load an empty file or a directory and moves on.
    put(root, f"updates/{KVER}/x.bin", b"")
    (root / "usr/lib/firmware/updates/x.bin").mkdir(parents=True)
    put(root, "x.bin")
    assert find(root, "x.bin") == "/lib/firmware/x.bin"


def test_symlinked_firmware_is_found_under_its_own_name(root: Path) -> None:
    # linux-firmware installs many names as links to a shared file.
    put(root, "vendor/real.bin")
    link = root / "usr/lib/firmware/vendor/alias.bin"
    link.symlink_to("real.bin")
    assert find(root, "vendor/alias.bin") == "/lib/firmware/vendor/alias.bin"
    (root / "usr/lib/firmware/vendor/dangling.bin").symlink_to("nowhere.bin")
    assert find(root, "vendor/dangling.bin") is None


def test_firmware_class_path_is_searched_first(root: Path) -> None:
    put(root, "x.bin")
    custom = root / "opt/fw/x.bin"
    custom.parent.mkdir(parents=True)
    custom.write_bytes(b"custom")
    assert find(root, "x.bin", "/opt/fw") == "/opt/fw/x.bin"
    assert find(root, "x.bin", "/opt/fw/") == "/opt/fw/x.bin"
    # Read from init's working directory, the root, when relative.
    assert find(root, "x.bin", "opt/fw") == "/opt/fw/x.bin"
    assert find(root, "y.bin", "/opt/fw") is None


def test_lookups_stay_inside_the_sysroot(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"host file")
    (root / "usr/lib/firmware").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/firmware/escape.bin").symlink_to(str(outside))
    assert find(root, "escape.bin") is None


def test_glob_names_expand_to_each_match(root: Path) -> None:
    # brcmfmac's firmware= values are globs; the device picks one name at run time.
    put(root, "brcm/brcmfmac43455-sdio.bin")
    put(root, "brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt.xz")
    put(root, "updates/brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt")
    put(root, "brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt")  # shadowed by updates/
    put(root, "brcm/brcmfmac4356-pcie.bin")
    put(root, "brcm/brcmfmac4366b-pcie.bin", b"")  # empty: the kernel would skip it
    pattern = "brcm/brcmfmac*-sdio.*.txt"
    assert is_pattern(pattern)
    assert not is_pattern("brcm/brcmfmac43455-sdio.bin")
    assert expand_firmware_pattern(Sysroot(root), pattern, DEFAULT_DIRS) == [
        "/lib/firmware/brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt.xz",
        "/lib/firmware/updates/brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt",
    ]
    assert expand_firmware_pattern(Sysroot(root), "brcm/brcmfmac*-pcie.bin", DEFAULT_DIRS) == [
        "/lib/firmware/brcm/brcmfmac4356-pcie.bin"
    ]
    assert expand_firmware_pattern(Sysroot(root), "nothing/*.bin", DEFAULT_DIRS) == []


def test_glob_in_a_directory_component(root: Path) -> None:
    put(root, "qcom/sm8250/adsp.mbn")
    put(root, "qcom/sm8350/adsp.mbn.zst")
    put(root, "qcom/sm8350/cdsp.mbn")
    assert expand_firmware_pattern(Sysroot(root), "qcom/sm8*/adsp.mbn", DEFAULT_DIRS) == [
        "/lib/firmware/qcom/sm8250/adsp.mbn",
        "/lib/firmware/qcom/sm8350/adsp.mbn.zst",
    ]


# --- the running kernel's firmware_class.path --------------------------------------------


def sysfs_with(tmp_path: Path, value: str | None) -> Path:
    sysfs = tmp_path / "sys"
    parameters = sysfs / "module/firmware_class/parameters"
    parameters.mkdir(parents=True)
    if value is not None:
        (parameters / "path").write_text(value)
    return sysfs


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),  # no such parameter
        ("\n", None),  # unset: sysfs shows an empty string and its newline
        ("/opt/firmware\n", "/opt/firmware"),
        # Set with a trailing newline ("echo" without -n): the kernel keeps it, so do we.
        ("/opt/firmware\n\n", "/opt/firmware\n"),
    ],
)
def test_host_firmware_class_path(
    tmp_path: Path, content: str | None, expected: str | None
) -> None:
    assert host_firmware_class_path(sysfs_with(tmp_path, content)) == expected


def test_host_firmware_class_path_without_sysfs(tmp_path: Path) -> None:
    assert host_firmware_class_path(tmp_path / "not-mounted") is None


def test_host_firmware_class_path_unreadable_raises(tmp_path: Path) -> None:
    sysfs = sysfs_with(tmp_path, None)
    (sysfs / "module/firmware_class/parameters/path").mkdir()  # reading it fails: EISDIR
    with pytest.raises(SysrootError, match="parameters/path: cannot read"):
        host_firmware_class_path(sysfs)
