"""An image built from this machine holds a working userspace, not just a file list.

These tests unpack the image and run its programs under chroot with its own loader,
so a library the closure missed shows up as a program that cannot start.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bookend.sysroot import Sysroot, parse_os_release
from tests.imagebuild import QEMU_VIRTIO_EXT4, bookend, build_image

KVER = max(os.listdir("/lib/modules"), default="") if os.path.isdir("/lib/modules") else ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")
LOADER = "/lib64/ld-linux-x86-64.so.2"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("image") / "initrd.img"
    return build_image(output, KVER, "--compress", "none", *QEMU_VIRTIO_EXT4)


@pytest.fixture(scope="module")
def tree(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    subprocess.run(["bsdtar", "-xpf", str(image), "-C", str(root)], check=True)
    return root


def listing(image: Path) -> dict[str, str]:
    lines = subprocess.run(["bsdtar", "-tvf", str(image)], check=True, capture_output=True,
                           text=True).stdout.splitlines()  # fmt: skip
    entries = {}
    for line in lines:
        fields = line.split()
        name = fields[8] if len(fields) > 8 else fields[-1]
        entries[name] = line
    return entries


def test_systemd_is_init_and_layout_keeps_debian_links(image: Path) -> None:
    entries = listing(image)
    assert entries["init"].endswith("init -> usr/lib/systemd/systemd")
    for link, target in (("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin")):
        assert entries[link].endswith(f"{link} -> {target}"), entries[link]
    for needed in ("etc/initrd-release", "usr/lib/systemd/systemd",
                   "usr/lib/systemd/system/initrd.target",
                   "usr/lib/systemd/system/initrd-switch-root.service",
                   "usr/lib/systemd/system-generators/systemd-fstab-generator",
                   "usr/lib/systemd/systemd-udevd", "usr/lib/systemd/systemd-journald",
                   "usr/sbin/sulogin", "usr/sbin/fsck.ext4", "dev/console"):  # fmt: skip
        assert needed in entries, needed
    assert entries["dev/console"].startswith("crw-------")
    assert all(line.split()[2:4] == ["0", "0"] for line in entries.values())


def test_initrd_release_names_the_sysroot_and_bookend(tree: Path) -> None:
    # /etc/initrd-release is what makes systemd run in initrd mode.
    release = parse_os_release((tree / "etc/initrd-release").read_text())
    host_os_release = Sysroot(Path("/")).read_text("/etc/os-release")
    assert host_os_release is not None, "the host has no /etc/os-release"
    host = parse_os_release(host_os_release)
    assert release["VARIANT_ID"] == "bookend-initrd"
    assert release["ID"] == host["ID"] and release["VERSION_ID"] == host["VERSION_ID"]
    assert os.readlink(tree / "etc/os-release") == "initrd-release"


def elf_files(tree: Path) -> list[str]:
    found = []
    for directory, _, files in os.walk(tree):
        for name in files:
            path = Path(directory, name)
            # Device nodes are skipped too: reading tree/dev/console would block.
            if path.is_symlink() or not path.is_file() or "/modules/" in str(path):
                continue
            with path.open("rb") as stream:
                if stream.read(4) == b"\x7fELF":
                    found.append("/" + str(path.relative_to(tree)))
    return found


def test_every_elf_file_resolves_all_its_libraries_inside_the_image(tree: Path) -> None:
    elves = elf_files(tree)
    assert "/usr/lib/systemd/systemd" in elves and len(elves) > 40
    unresolved = []
    for elf in elves:
        result = subprocess.run(["chroot", str(tree), LOADER, "--list", elf],
                                capture_output=True, text=True, check=False)  # fmt: skip
        # --list on the loader itself, or a static binary, says so and exits non-zero.
        if "not found" in result.stdout + result.stderr:
            unresolved.append(f"{elf}: {result.stdout.strip()}")
    assert not unresolved, "\n".join(unresolved)


@pytest.mark.parametrize(
    "program", [["/usr/lib/systemd/systemd", "--version"], ["/usr/bin/udevadm", "--version"],
                ["/usr/bin/mount", "--version"], ["/usr/sbin/e2fsck", "-V"],
                ["/usr/bin/systemctl", "--version"], ["/bin/sh", "-c", "exit 0"]],
)  # fmt: skip
def test_programs_run_from_the_image_alone(tree: Path, program: list[str]) -> None:
    result = subprocess.run(["chroot", str(tree), *program], capture_output=True, text=True,
                            check=False, env={"PATH": "/usr/bin:/usr/sbin"})  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("request_name", "expected"),
    [("ext4", "ext4.ko"), ("fs-ext4", "ext4.ko"), ("virtio_blk", "virtio_blk.ko"),
     ("virtio:d00000002v00001AF4", "virtio_blk.ko")],
)  # fmt: skip
def test_modprobe_in_the_image_finds_modules_by_name_and_alias(
    tree: Path, request_name: str, expected: str
) -> None:
    result = subprocess.run(
        ["modprobe", "-d", str(tree), "-S", KVER, "--show-depends", request_name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    for line in result.stdout.splitlines():
        if line.startswith("insmod "):
            assert line.split()[1].startswith(str(tree)), line


def test_modules_outside_the_request_are_not_in_the_index(tree: Path) -> None:
    def show_depends(*root: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["modprobe", *root, "-S", KVER, "--show-depends", "e1000"],
                              capture_output=True, text=True, check=False)  # fmt: skip

    on_the_host = show_depends()
    assert on_the_host.returncode == 0, f"the host kernel has no e1000: {on_the_host.stderr}"
    missing = show_depends("-d", str(tree))
    assert missing.returncode == 1
    assert f"Module e1000 not found in directory {tree}/lib/modules/{KVER}" in missing.stderr


EPOCH = 1_700_000_000  # November 2023: before the files this test writes, after "old"
BEFORE_EPOCH = EPOCH - 86_400


def test_two_builds_are_identical_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two sources of our own go in with --add-file: "touched" gets a new mtime between
    # the builds, which the clamp to SOURCE_DATE_EPOCH must hide; "old" is older than
    # the epoch and keeps its own time, since clamping is not overwriting.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    sources = tmp_path / "sources"
    sources.mkdir()
    touched, old = sources / "touched.conf", sources / "old.conf"
    touched.write_text("touched between the builds\n")
    old.write_text("older than the epoch\n")
    os.utime(old, (BEFORE_EPOCH, BEFORE_EPOCH))
    args = (*QEMU_VIRTIO_EXT4, "--add-file", str(touched), "--add-file", str(old))
    first = build_image(tmp_path / "a.img", KVER, *args)
    mtime_in_first_build = touched.stat().st_mtime
    os.utime(touched, (EPOCH + 1, EPOCH + 1))
    assert touched.stat().st_mtime != mtime_in_first_build
    second = build_image(tmp_path / "b.img", KVER, *args)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd by default
    # bsdtar, another reader, restores each member's mtime as it unpacks it.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    members = [str(path.relative_to("/")) for path in (touched, old)]
    subprocess.run(["bsdtar", "-xf", str(second), "-C", str(unpacked), *members], check=True)
    assert (unpacked / members[0]).stat().st_mtime == EPOCH
    assert (unpacked / members[1]).stat().st_mtime == BEFORE_EPOCH


def test_bad_module_fails_in_one_line_and_keeps_the_old_image(tmp_path: Path) -> None:
    output = tmp_path / "initrd.img"
    output.write_bytes(b"the image that boots today")
    result = bookend("build", "--kver", KVER, "-o", str(output), "--add-module", "ext44",
                     check=False)  # fmt: skip
    assert result.returncode == 2
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and "ext44" in error_lines[0], result.stderr
    assert output.read_bytes() == b"the image that boots today"
    assert os.listdir(tmp_path) == ["initrd.img"]


def test_default_output_is_in_the_working_directory_not_boot(tmp_path: Path) -> None:
    result = subprocess.run(
        ["python3", "-m", "bookend", "build", "--kver", KVER, "--compress", "none"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The exitrd and its digest go beside the initrd.
    assert sorted(os.listdir(tmp_path)) == [
        f"bookend-exitrd-{KVER}.img",
        f"bookend-exitrd-{KVER}.img.sha256",
        f"bookend-initrd-{KVER}.img",
    ]


def test_why_prints_the_chain_to_a_library() -> None:
    result = bookend("plan", "--kver", KVER, "--why", "/usr/lib/x86_64-linux-gnu/libc.so.6")
    assert result.stdout.startswith("/usr/lib/x86_64-linux-gnu/libc.so.6 <- ")
    assert "DT_NEEDED of" in result.stdout and "feature " in result.stdout


def test_embedded_keyfile_makes_the_image_root_only(tmp_path: Path) -> None:
    keyfile = tmp_path / "root.key"
    keyfile.write_bytes(os.urandom(64))
    output = tmp_path / "initrd.img"
    result = bookend("build", "--kver", KVER, "-o", str(output), "--compress", "none",
                     "--add-feature", "luks", "--add-keyfile", str(keyfile))  # fmt: skip
    assert "written with mode 0600" in result.stderr
    assert output.stat().st_mode & 0o777 == 0o600
    entries = listing(output)
    assert str(keyfile).lstrip("/") in entries
    for needed in ("usr/lib/systemd/systemd-cryptsetup", "usr/sbin/dmsetup",
                   "usr/lib/systemd/system-generators/systemd-cryptsetup-generator",
                   "usr/lib/udev/rules.d/55-dm.rules"):  # fmt: skip
        assert needed in entries, needed


def test_why_answers_from_the_image_alone(image: Path) -> None:
    """The manifest inside the image gives the same chain `plan --why` gives before a build."""
    library = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    from_image = bookend("why", str(image), library).stdout
    from_plan = bookend("plan", "--kver", KVER, *QEMU_VIRTIO_EXT4, "--why", library).stdout
    assert from_image == from_plan and "DT_NEEDED of" in from_image
    missing = bookend("why", str(image), "/etc/shadow-", check=False)
    assert missing.returncode == 1 and "is not in" in missing.stderr
