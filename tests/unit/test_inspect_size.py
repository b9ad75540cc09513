"""`bookend size`: the size trees by directory, feature and package, as text, JSON and HTML."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bookend.archive import ArchiveEntry, Compression, EntryKind, open_compressor, write_cpio
from bookend.closure import Closure, ClosureEntry
from bookend.inspect.image import scan_image
from bookend.inspect.size import (
    EARLY_MICROCODE,
    NO_PACKAGE,
    NOT_IN_MANIFEST,
    SizeNode,
    collapse_chains,
    collapse_groups,
    directory_tree,
    file_sizes,
    format_summary,
    origin_group,
    package_tree,
    size_report,
)
from bookend.inspect.size_html import DATA_MARK, page_data, render_html
from bookend.manifest import with_manifest
from bookend.packages import Package, load_package_index
from tests.unit.newcfile import S_IFLNK, S_IFREG, archive, newc

ROOT = Path(__file__).resolve().parents[2]
MODS = "/usr/lib/modules/6.1.0-test/kernel"
MICROCODE = "/kernel/x86/microcode/AuthenticAMD.bin"


def file(path: str, size: int, fill: bytes = b"x") -> ArchiveEntry:
    return ArchiveEntry(path, EntryKind.FILE, 0o644, data=fill * size)


def link(path: str, target: str) -> ArchiveEntry:
    return ArchiveEntry(path, EntryKind.SYMLINK, 0o777, target=target)


def directory(path: str) -> ArchiveEntry:
    return ArchiveEntry(path, EntryKind.DIRECTORY, 0o755)


FILES = [
    file("/usr/bin/tool", 1000),
    file("/usr/lib/x86_64-linux-gnu/libtool.so.1", 3000),
    file(f"{MODS}/fs/ext4/ext4.ko", 5000),
    file("/etc/fstab", 40),
    link("/init", "usr/lib/systemd/systemd"),  # 23 bytes of target
    link("/lib", "usr/lib"),  # 7
    directory("/usr"),
    directory("/usr/lib"),
    ArchiveEntry("/dev/console", EntryKind.CHAR_DEVICE, 0o600, rdev=0x501),
]
CONTENT = 1000 + 3000 + 5000 + 40 + 23 + 7


def write_image(path: Path, entries: list[ArchiveEntry], early: list[ArchiveEntry]) -> Path:
    """An uncompressed early archive (when given), then a zstd one, as bookend writes."""
    with path.open("wb") as out:
        if early:
            write_cpio(early, out, epoch=0)
        with open_compressor(Compression.ZSTD, out) as stream:
            write_cpio(entries, stream, epoch=0)
    return path


# What pulled each fixture file in, worded as bookend's plan and closure word it.
CLOSURE = Closure(
    {
        path: ClosureEntry(entry, reason, parent)
        for entry, reason, parent in [
            (FILES[0], "feature udev", None),
            (FILES[1], "DT_NEEDED of", "/usr/bin/tool"),
            (FILES[2], "module ext4 <- filesystem ext4 (config filesystems)", None),
            (FILES[3], "feature filesystems: the initrd's fstab", None),
            (FILES[4], "feature systemd: the kernel runs /init", None),
            (FILES[5], "link on the way to", "/usr/lib/x86_64-linux-gnu/libtool.so.1"),
        ]
        for path in [entry.path]
    }
)


@pytest.fixture
def bookend_image(tmp_path: Path) -> Path:
    """A bookend-like image: early microcode, then the files and their manifest."""
    closure = with_manifest(CLOSURE)
    manifest = closure.entries["/usr/lib/bookend/manifest.json"].entry
    entries = [*FILES, manifest, directory("/usr/lib/bookend"), file("/etc/stray", 9)]
    return write_image(tmp_path / "initrd.img", entries, [file(MICROCODE, 300)])


@pytest.fixture
def foreign_image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "foreign.img", FILES, [])


def sizes_of(tree: SizeNode) -> dict[str, int]:
    return {child.name: child.size for child in tree.children.values()}


# --- the directory tree -----------------------------------------------------------------


def test_directory_sums_are_exact(foreign_image: Path) -> None:
    sizes = file_sizes(scan_image(foreign_image))
    assert sizes == {
        "/usr/bin/tool": 1000,
        "/usr/lib/x86_64-linux-gnu/libtool.so.1": 3000,
        f"{MODS}/fs/ext4/ext4.ko": 5000,
        "/etc/fstab": 40,
        "/init": 23,
        "/lib": 7,
    }  # directories and the device node hold no content
    tree = directory_tree(sizes)
    assert (tree.size, tree.files) == (CONTENT, 6)
    assert sizes_of(tree) == {"usr": 9000, "etc": 40, "init": 23, "lib": 7}
    usr = tree.children["usr"]
    assert sizes_of(usr) == {"bin": 1000, "lib": 8000}
    assert sizes_of(usr.children["lib"]) == {"x86_64-linux-gnu": 3000, "modules": 5000}
    assert usr.children["lib"].files == 2


def test_hard_links_count_once_and_the_later_duplicate_wins(tmp_path: Path) -> None:
    image = tmp_path / "links.img"
    image.write_bytes(
        archive(
            newc("usr/bin/a", S_IFREG | 0o755, b"", ino=7, nlink=2),
            newc("usr/bin/b", S_IFREG | 0o755, b"z" * 400, ino=7, nlink=2),
            newc("etc/twice", S_IFREG | 0o644, b"1" * 50, ino=8),
            newc("etc/twice", S_IFREG | 0o644, b"2" * 5, ino=9),
            newc("sbin", S_IFLNK | 0o777, b"usr/bin", ino=10),
        )
    )
    sizes = file_sizes(scan_image(image))
    assert sizes == {"/usr/bin/a": 400, "/usr/bin/b": 0, "/etc/twice": 5, "/sbin": 7}
    assert directory_tree(sizes).size == 412


def test_chains_of_single_directories_merge() -> None:
    tree = directory_tree(
        {
            "/usr/lib/x86_64-linux-gnu/libc.so.6": 10,
            "/usr/lib/x86_64-linux-gnu/libm.so.6": 5,
            "/usr/bin/sh": 3,
            "/etc/only/one": 1,
        }
    )
    collapsed = collapse_chains(tree)
    assert sizes_of(collapsed) == {"usr": 18, "etc/only": 1}
    usr = collapsed.children["usr"]
    assert sizes_of(usr) == {"lib/x86_64-linux-gnu": 15, "bin": 3}
    # A directory with one file keeps it as a file of its own.
    assert sizes_of(collapsed.children["etc/only"]) == {"one": 1}
    assert sizes_of(tree) == {"usr": 18, "etc": 1}  # the original is untouched


# --- features, from the manifest --------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "group"),
    [
        ("feature systemd", "systemd"),
        ("feature emergency: emergency shell locked", "emergency"),
        ("module autofs4 <- feature systemd", "systemd"),
        ("module ext4 <- filesystem ext4 (config filesystems)", "filesystems"),
        ("module virtio_blk <- modules (command line)", "modules (configured)"),
        ("driver class nvme <- driver_classes (config)", "driver classes (configured)"),
        ("module ahci <- driver class ata <- mode generic", "generic drivers"),
        ("module virtio_blk <- hostonly: /dev/vda (root)", "hostonly"),
        ("files (config)", "files (configured)"),
        ("module index of the included modules (depmod)", "module index"),
        ("exitrd: storage tools of feature lvm", "exitrd"),
        ("bookend: why each entry is in the image", "manifest"),
        ("a reason written later", "a reason written later"),
    ],
)
def test_the_origin_of_a_chain_names_its_group(reason: str, group: str) -> None:
    assert origin_group(reason) == group


def test_features_from_the_manifest(bookend_image: Path) -> None:
    report = size_report(bookend_image, Path("/nonexistent"))
    tree = report.views["feature"]
    assert tree is not None
    manifest_size = len(with_manifest(CLOSURE).entries["/usr/lib/bookend/manifest.json"]
                        .entry.data or b"")  # fmt: skip
    assert sizes_of(tree) == {
        # The library and the /lib link on the way to it count where their chain starts.
        "udev": 1000 + 3000 + 7,
        "filesystems": 5000 + 40,
        "systemd": 23,
        "manifest": manifest_size,
        NOT_IN_MANIFEST: 9,
        EARLY_MICROCODE: 300,
    }
    assert tree.size == report.total == CONTENT + manifest_size + 9 + 300
    library = tree.children["udev"].children["usr"].children["lib"]
    leaf = library.children["x86_64-linux-gnu"].children["libtool.so.1"]
    assert leaf.detail == (
        "/usr/lib/x86_64-linux-gnu/libtool.so.1 <- DT_NEEDED of /usr/bin/tool <- feature udev"
    )
    assert report.compressions == ("none", "zstd")


def test_a_foreign_image_says_it_has_no_features(foreign_image: Path) -> None:
    report = size_report(foreign_image, Path("/nonexistent"))
    assert report.views["feature"] is None
    assert "no /usr/lib/bookend/manifest.json" in report.notes["feature"]
    assert report.views["package"] is None
    assert report.notes["package"] == "no dpkg, rpm or pacman database in /nonexistent"
    text = format_summary(report)
    assert "By feature (no /usr/lib/bookend/manifest.json" in text


# --- packages, from dpkg's database (rpm and pacman: test_packages.py) -------------------


def dpkg_sysroot(root: Path, merged: bool) -> Path:
    """A sysroot whose packages list their files as Debian 12's do: some under /lib
    (libc6, the kernel), some under /usr; merged-/usr links /lib to usr/lib."""
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    for name in ("lib", "bin"):
        if merged:
            (root / name).symlink_to(f"usr/{name}")
        else:
            (root / name).mkdir()
    lists = {
        "libtool1:amd64": ["/.", "/lib", "/lib/x86_64-linux-gnu",
                           "/lib/x86_64-linux-gnu/libtool.so.1"],
        "tool": ["/.", "/usr", "/usr/bin", "/usr/bin/tool", "/bin/tool-old"],
        "linux-image-6.1.0-test": ["/.", "/lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko"],
        "base-files": ["/.", "/etc", "/usr/lib/os-release"],
    }  # fmt: skip
    for package, paths in lists.items():
        (info / f"{package}.list").write_text("\n".join(paths) + "\n")
    (info / "tool.md5sums").write_text("0 usr/bin/not-a-list\n")
    return root


def test_packages_across_merged_usr(tmp_path: Path) -> None:
    index = load_package_index(dpkg_sysroot(tmp_path / "root", merged=True))
    assert index.aliases == {"/bin": "/usr/bin", "/lib": "/usr/lib"}
    sizes = {
        "/usr/lib/x86_64-linux-gnu/libtool.so.1": 3000,  # listed as /lib/...
        "/usr/bin/tool": 1000,
        "/usr/bin/tool-old": 200,  # listed as /bin/tool-old
        f"{MODS}/fs/ext4/ext4.ko": 5000,  # listed as /lib/modules/...
        "/lib/x86_64-linux-gnu/libtool.so.1": 30,  # the image's own /lib path
        "/etc/fstab": 40,  # generated: nobody's
        "/usr/bin/not-a-list": 1,
    }
    tree = package_tree(sizes, index)
    assert sizes_of(tree) == {
        "libtool1:amd64": 3030,
        "tool": 1200,
        "linux-image-6.1.0-test": 5000,
        NO_PACKAGE: 41,
    }
    # The kernel's package shows its modules as a directory tree.
    kernel = collapse_groups(tree).children["linux-image-6.1.0-test"]
    assert list(kernel.children) == ["usr/lib/modules/6.1.0-test/kernel/fs/ext4"]


def test_no_aliasing_without_merged_usr(tmp_path: Path) -> None:
    index = load_package_index(dpkg_sysroot(tmp_path / "root", merged=False))
    assert index.aliases == {}
    assert index.owner("/lib/x86_64-linux-gnu/libtool.so.1") == Package("libtool1:amd64", "")
    assert index.owner("/usr/lib/x86_64-linux-gnu/libtool.so.1") is None
    assert index.owner("/usr/bin/tool") == Package("tool", "")


# --- text, JSON and HTML ----------------------------------------------------------------


def bookend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bookend", *args], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip


def test_summary_lists_directories_features_and_packages(
    bookend_image: Path, tmp_path: Path
) -> None:
    sysroot = dpkg_sysroot(tmp_path / "root", merged=True)
    result = bookend("size", str(bookend_image), "--sysroot", str(sysroot))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    manifest = len(
        with_manifest(CLOSURE).entries["/usr/lib/bookend/manifest.json"].entry.data or b""
    )
    total = CONTENT + 9 + 300 + manifest
    assert lines[0].startswith(f"{bookend_image}: ")
    assert lines[0].endswith(f"(none, zstd), {total / 1e3:.1f} kB of content in 9 files")
    assert "By directory:" in lines
    usr = next(line for line in lines if line.endswith("  /usr"))
    usr_size = 9000 + manifest
    assert usr.split()[:3] == [f"{usr_size / 1e3:.1f}", "kB", f"{100 * usr_size / total:.1f}%"]
    features = section(lines, "By feature")
    assert features[1] == ["4.0", "kB", f"{100 * 4007 / total:.1f}%", "udev"]
    assert [" ".join(row[3:]) for row in features] == [
        "filesystems", "udev", "manifest", "early microcode", "systemd", NOT_IN_MANIFEST
    ]  # fmt: skip
    packages = section(lines, "By package")
    assert packages[0] == ["5.0", "kB", f"{100 * 5000 / total:.1f}%", "linux-image-6.1.0-test"]
    assert [row[-1] for row in packages] == ["linux-image-6.1.0-test", "libtool1:amd64",
                                             "tool", "package)"]  # fmt: skip


def section(lines: list[str], title: str) -> list[list[str]]:
    """The words of each line of the summary's section that starts with title."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return [line.split() for line in lines[start:end]]


def test_json_holds_the_whole_trees(bookend_image: Path) -> None:
    result = bookend("size", "--json", str(bookend_image), "--sysroot", "/nonexistent")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["compression"] == ["none", "zstd"]
    assert data["file_size"] == bookend_image.stat().st_size
    directory = data["views"]["directory"]
    assert directory["size"] == data["content_size"]
    assert sum(child["size"] for child in directory["children"]) == directory["size"]
    usr = next(child for child in directory["children"] if child["name"] == "usr")
    assert [child["name"] for child in usr["children"]] == ["lib", "bin"]  # biggest first
    assert data["views"]["package"] is None


def embedded_data(html: str) -> object:
    match = re.search(r'<script id="size-data" type="application/json">(.*?)</script>', html,
                      re.S)  # fmt: skip
    assert match is not None
    return json.loads(match.group(1))


def test_html_is_self_contained_and_carries_the_report(bookend_image: Path) -> None:
    report = size_report(bookend_image, Path("/nonexistent"))
    html = render_html(report)
    assert DATA_MARK not in html
    assert embedded_data(html) == json.loads(json.dumps(page_data(report)))
    # Nothing to fetch: no addresses, no external scripts, styles, fonts or images.
    assert not re.search(r"https?:|//[a-z]|src=|href=|@import|url\(", html, re.I)


def test_names_cannot_break_out_of_the_page(tmp_path: Path) -> None:
    evil = "/etc/</script><script>alert(1)</script><!--"
    image = write_image(tmp_path / "evil.img", [file(evil, 3)], [])
    html = render_html(size_report(image, Path("/nonexistent")))
    assert html.count("</script>") == 2  # the data's and the code's own
    data = embedded_data(html)
    assert isinstance(data, dict)
    etc = data["views"]["directory"]["children"][0]
    assert etc["name"] == "etc/</script><script>alert(1)<"  # one file, below three dirs
    assert etc["children"][0]["name"] == "script><!--"


def test_html_is_written_atomically(bookend_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "size.html"
    out.write_text("old")
    result = bookend("size", str(bookend_image), "--html", str(out), "--sysroot", "/none")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{out}: treemap of {bookend_image}")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    missing = bookend("size", str(bookend_image), "--html", str(tmp_path / "no/size.html"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_a_corrupt_image_is_one_line_and_status_1(tmp_path: Path) -> None:
    image = tmp_path / "bad.img"
    image.write_bytes(b"not an image at all")
    result = bookend("size", str(image))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unrecognised data at offset 0" in result.stderr
