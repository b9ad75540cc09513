"""ls, extract, diff and check on real images: bookend's own, built from this machine,
and foreign ones built here by initramfs-tools' mkinitramfs and by dracut (installed, or
else run from its unpacked Debian packages, harness/foreign.py: it conflicts with
initramfs-tools).

Independent readers (bsdtar, and initramfs-tools' lsinitramfs for several segments)
say what the images hold, so the answers are held to other programs' view.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bookend.resolve import newest_kernel
from harness.foreign import ensure_dracut, unpacked_dracut
from harness.images import QEMU_VIRTIO_EXT4, bookend, build_image, content_by_bsdtar, leaves
from harness.rootdisk import cache_dir_default

KVER = newest_kernel(Path("/")) or ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")
ROOT_ARGS = (*QEMU_VIRTIO_EXT4, "--root", "/dev/vda")
RELEASE_MISSING = "/etc/initrd-release: missing (systemd runs as an initrd only when it is there)"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bookend's initrd and exitrd (zstd), and an initrd with e1000 more (uncompressed)."""
    directory = tmp_path_factory.mktemp("bookend")
    initrd = build_image(directory / "initrd.img", KVER, "--compress", "zstd", *ROOT_ARGS)
    # With an exitrd of its own, the same as the first one: both initrds name its digest.
    more = build_image(directory / "more-initrd.img", KVER, "--compress", "none", *ROOT_ARGS,
                       "--add-module", "e1000",
                       "--exitrd-output", str(directory / "more-exitrd.img"))  # fmt: skip
    return {"initrd": initrd, "exitrd": directory / "exitrd.img", "more": more}


def mkinitramfs(output: Path) -> None:
    subprocess.run(["mkinitramfs", "-o", str(output), KVER], check=True, capture_output=True)


def dracut(output: Path) -> None:
    options = ["--no-hostonly", "--force", "--quiet", str(output), KVER]
    if shutil.which("dracut"):
        subprocess.run(["dracut", *options], check=True, capture_output=True)
        return
    # Not installed (it would remove initramfs-tools): its packages, unpacked, run on this
    # machine's own files.
    try:
        root, _ = ensure_dracut(cache_dir_default())
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"dracut is not installed and its packages can't be fetched: {exc}")
    dracut_argv, dracut_env = unpacked_dracut(root)
    subprocess.run([*dracut_argv, *options], check=True, capture_output=True,
                   env={**os.environ, **dracut_env})  # fmt: skip


FOREIGN: dict[str, Callable[[Path], None]] = {"mkinitramfs": mkinitramfs, "dracut": dracut}


@pytest.fixture(scope="module", params=sorted(FOREIGN))
def foreign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The foreign tool's image with an early microcode cpio in front, as it writes one
    on a machine with microcode packages: two segments."""
    tool: str = request.param
    if tool == "mkinitramfs" and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    directory = tmp_path_factory.mktemp(tool)
    FOREIGN[tool](directory / "main.img")
    early = directory / "early"
    (early / "kernel/x86/microcode").mkdir(parents=True)
    (early / "kernel/x86/microcode/AuthenticAMD.bin").write_bytes(b"\x01" * 100)
    names = "kernel\nkernel/x86\nkernel/x86/microcode\nkernel/x86/microcode/AuthenticAMD.bin\n"
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=early, input=names.encode(),
                          capture_output=True, check=True).stdout  # fmt: skip
    image = directory / f"{tool}.img"
    image.write_bytes(cpio + (directory / "main.img").read_bytes())
    return image


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return bookend(*args, check=False)


def ls_json(image: Path) -> Any:
    result = run("ls", "--json", str(image))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def bsdtar_names(image: Path) -> list[str]:
    out = subprocess.run(["bsdtar", "-tf", str(image)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return out.splitlines()


# --- ls ------------------------------------------------------------------------------


def test_ls_of_a_bookend_image_is_what_bsdtar_lists(images: dict[str, Path]) -> None:
    listing = ls_json(images["initrd"])
    assert listing["segments"] == [
        {"index": 0, "compression": "zstd", "offset": 0, "entries": len(listing["entries"])}
    ]
    entries = {e["path"]: e for e in listing["entries"]}
    assert sorted(entries) == sorted(bsdtar_names(images["initrd"]))
    assert entries["init"]["target"] == "usr/lib/systemd/systemd"
    assert entries["dev/console"]["type"] == "chardev" and entries["dev/console"]["device"] == [
        5,
        1,
    ]
    systemd = Path("/usr/lib/systemd/systemd")
    assert entries["usr/lib/systemd/systemd"]["size"] == systemd.stat().st_size
    assert entries["usr/lib/systemd/systemd"]["mode"] == "0755"
    by_size = run("ls", "--sort", "size", str(images["initrd"])).stdout.splitlines()[1:]
    sizes = [int(line.split()[2]) for line in by_size if not line.startswith("c")]
    assert sizes == sorted(sizes, reverse=True)


def test_ls_of_a_foreign_image_segment_by_segment(foreign: Path) -> None:
    listing = ls_json(foreign)
    segments = listing["segments"]
    assert [(s["index"], s["compression"]) for s in segments][:1] == [(0, "none")]
    assert len(segments) >= 2
    names = [e["path"] for e in listing["entries"]]
    assert names[:4] == ["kernel", "kernel/x86", "kernel/x86/microcode",
                         "kernel/x86/microcode/AuthenticAMD.bin"]  # fmt: skip
    if shutil.which("lsinitramfs"):
        # initramfs-tools' own reader, which also walks every segment.
        reference = subprocess.run(["lsinitramfs", str(foreign)], capture_output=True,
                                   text=True, check=True).stdout.splitlines()  # fmt: skip
        assert sorted(names) == sorted(reference)
    assert any(name.endswith(".ko") or ".ko." in name for name in names)


# --- extract -------------------------------------------------------------------------


def tree_state(top: Path) -> dict[str, tuple[int, int, object]]:
    """Every path below top: type, permission bits, and content, target or device."""
    state: dict[str, tuple[int, int, object]] = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            content: object = None
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = st.st_rdev
            state[str(path.relative_to(top))] = (stat.S_IFMT(st.st_mode),
                                                 stat.S_IMODE(st.st_mode), content)  # fmt: skip
    return state


def bsdtar_extract(image: Path, directory: Path) -> Path:
    directory.mkdir()
    subprocess.run(["bsdtar", "-xpf", str(image), "-C", str(directory)], check=True)
    return directory


@pytest.mark.parametrize("which", ["initrd", "exitrd"])
def test_extract_of_bookend_images_matches_bsdtar(
    images: dict[str, Path], which: str, tmp_path: Path
) -> None:
    result = run("extract", str(images[which]), str(tmp_path / "ours"))
    assert result.returncode == 0, result.stderr
    reference = bsdtar_extract(images[which], tmp_path / "bsdtar")
    assert tree_state(tmp_path / "ours") == tree_state(reference)


def test_extract_of_a_foreign_image_matches_its_segments(foreign: Path, tmp_path: Path) -> None:
    result = run("extract", str(foreign), str(tmp_path / "ours"))
    assert result.returncode == 0, result.stderr
    ours = tree_state(tmp_path / "ours")
    assert ours["kernel/x86/microcode/AuthenticAMD.bin"][2] == b"\x01" * 100
    # bsdtar reads the first segment only, so the main one is compared on its own.
    main = foreign.with_name("main.img")
    reference = tree_state(bsdtar_extract(main, tmp_path / "bsdtar"))
    assert {k: v for k, v in ours.items() if not k.startswith("kernel")} == {
        k: v for k, v in reference.items() if not k.startswith("kernel")
    }


def test_extract_only_some_paths(images: dict[str, Path], tmp_path: Path) -> None:
    result = run("extract", str(images["initrd"]), str(tmp_path / "some"),
                     "/usr/lib/systemd/systemd", "etc/initrd-release")  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = tree_state(tmp_path / "some")
    assert set(state) == {"usr", "usr/lib", "usr/lib/systemd", "usr/lib/systemd/systemd",
                          "etc", "etc/initrd-release"}  # fmt: skip
    assert state["usr/lib/systemd/systemd"][2] == Path("/usr/lib/systemd/systemd").read_bytes()


# --- check ---------------------------------------------------------------------------


def test_check_passes_bookends_initrd_and_exitrd(images: dict[str, Path]) -> None:
    result = run("check", str(images["initrd"]))
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stdout
    report = json.loads(run("check", "--json", str(images["exitrd"])).stdout)
    assert report["kind"] == "exitrd" and report["ok"] is True
    assert report["checked"]["elf"] > 10 and report["checked"]["modules"] == 0
    report = json.loads(run("check", "--json", str(images["initrd"])).stdout)
    assert report["checked"]["units"] > 10 and report["checked"]["modules"] > 3


def test_check_a_foreign_image(foreign: Path) -> None:
    report = json.loads(run("check", "--json", str(foreign)).stdout)
    assert report["kind"] == "initrd" and report["checked"]["elf"] > 10
    gaps = [p for p in report["problems"] if "needs" in p or "interpreter" in p]
    if "mkinitramfs" in foreign.name:
        # Every library of every program is inside; initramfs-tools, whose init is a shell
        # script and not systemd, writes no /etc/initrd-release.
        assert gaps == [] and report["problems"] == [RELEASE_MISSING]
    else:
        # dracut 059 copies glibc's NSS modules by glob without following their
        # libraries (libnss_hesiod needs libresolv): a real gap, which the listing confirms.
        names = {Path(entry["path"]).name for entry in ls_json(foreign)["entries"]}
        for gap in gaps:
            library = re.fullmatch(r"(\S+): needs (\S+), which is not in the image", gap)
            assert library and "/libnss_" in library[1] and library[2] not in names, gap
    result = run("check", str(foreign), "--root-fstype", "ext4")
    assert "root filesystem" not in result.stdout
    result = run("check", str(foreign), "--root-fstype", "bookendfs")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        f"root filesystem bookendfs: its module is not in /lib/modules/{KVER} "
        "and modules.builtin does not list it"
    )


# --- size ----------------------------------------------------------------------------


def test_size_of_a_foreign_image(foreign: Path, tmp_path: Path) -> None:
    report = json.loads(run("size", "--json", str(foreign)).stdout)
    # bsdtar reads the first segment only: the main one is summed on its own.
    main = content_by_bsdtar(foreign.with_name("main.img"), tmp_path)
    assert report["content_size"] == 100 + main
    assert len(report["compression"]) == 2 and report["compression"][0] == "none"
    assert report["views"]["feature"] is None
    assert "no /usr/lib/bookend/manifest.json" in report["notes"]["feature"]
    if Path("/var/lib/dpkg/info").is_dir():
        owners = {names[1] for names, _ in leaves(report["views"]["package"])
                  if names[-1].endswith(".ko")}  # fmt: skip
        assert owners == {f"linux-image-{KVER}"}


# --- diff ----------------------------------------------------------------------------


def test_diff_of_two_bookend_builds(images: dict[str, Path]) -> None:
    result = run("diff", "--json", str(images["initrd"]), str(images["more"]))
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert "e1000" in diff["modules"]["added"]
    assert diff["modules"]["removed"] == [] and diff["modules"]["changed"] == []
    assert diff["units"] == {"added": [], "removed": [], "changed": []}
    added = {c["path"]: c for c in diff["changes"] if c["status"] == "added"}
    e1000 = next(path for path in added if path.endswith("/e1000.ko"))
    assert added[e1000]["size_change"] > 10_000
    # Compression aside, only what e1000 brings differs: the module, its directories,
    # the index that lists it, the list of modules to load and bookend's own records.
    changed = sorted(c["path"] for c in diff["changes"] if c["status"] == "changed")
    expected = (f"usr/lib/modules/{KVER}/modules.", "etc/modules-load.d/", "usr/lib/bookend/")
    assert f"usr/lib/modules/{KVER}/modules.dep" in changed
    assert all(path.startswith(expected) for path in changed), changed
    assert diff["total"]["new_file_size"] - diff["total"]["old_file_size"] == (
        images["more"].stat().st_size - images["initrd"].stat().st_size
    )
    text = run("diff", str(images["initrd"]), str(images["more"])).stdout.splitlines()
    assert f"+ {e1000}  +{added[e1000]['size_change']:,} bytes" in text
    assert any(line.startswith("kernel modules: ") and "+e1000" in line for line in text)
    assert text[-1].startswith(f"total: {diff['total']['added']} added, 0 removed, ")


def test_diff_of_a_foreign_image_and_its_early_segment(foreign: Path) -> None:
    main = foreign.with_name("main.img")
    diff = json.loads(run("diff", "--json", str(main), str(foreign)).stdout)
    assert [(c["path"], c["status"]) for c in diff["changes"]] == [
        ("kernel", "added"), ("kernel/x86", "added"), ("kernel/x86/microcode", "added"),
        ("kernel/x86/microcode/AuthenticAMD.bin", "added"),
    ]  # fmt: skip
    assert diff["total"]["content_change"] == 100
    assert diff["modules"]["added"] == [] and diff["units"]["added"] == []
    reverse = json.loads(run("diff", "--json", str(foreign), str(main)).stdout)
    assert {c["status"] for c in reverse["changes"]} == {"removed"}


# --- build ---------------------------------------------------------------------------


def test_build_keeps_a_good_initrd_from_a_failing_one_unless_forced(tmp_path: Path) -> None:
    output = tmp_path / "initrd.img"
    common = ("--compress", "none", "--no-exitrd", "--filesystem", "ext4", "--root", "/dev/vda")
    build_image(output, KVER, *common)
    good = output.read_bytes()
    # The root is ext4 but its module is left out: the new image could not mount it.
    failing = ("build", "--kver", KVER, "-o", str(output), *common, "--omit-module", "ext4")
    result = run(*failing)
    assert result.returncode == 1
    problem = (
        f"  root filesystem ext4: its module is not in /lib/modules/{KVER} "
        "and modules.builtin does not list it"
    )
    assert f"bookend: {output}: not replaced, the new initrd fails its check" in result.stderr
    assert problem in result.stderr.splitlines()
    assert output.read_bytes() == good
    assert os.listdir(tmp_path) == ["initrd.img"]

    result = run(*failing, "--force")
    assert result.returncode == 0, result.stderr
    assert f"{output} fails its check:" in result.stderr and problem in result.stderr
    assert output.read_bytes() != good
    result = run("check", str(output))
    assert result.returncode == 1 and result.stdout == problem.strip() + "\n"
