"""`bookend size` on a real bookend image built from this machine, and its HTML treemap
rendered by headless Chromium: the screenshot is looked at, and the page's own layout
(read back from the DOM after its script ran) is held to the sizes it shows."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bookend.inspect.size import NO_PACKAGE, NOT_IN_MANIFEST
from bookend.resolve import newest_kernel
from tests.imagebuild import QEMU_VIRTIO_EXT4, bookend, build_image
from tests.pngfile import read_png

KVER = newest_kernel(Path("/")) or ""
pytestmark = pytest.mark.skipif(not KVER, reason="no kernel modules installed under /lib/modules")
WINDOW = (1280, 900)
DPKG = Path("/var/lib/dpkg/info")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One segment (no microcode), so bsdtar, which reads only the first, sees it all.
    output = tmp_path_factory.mktemp("size") / "initrd.img"
    return build_image(output, KVER, "--compress", "zstd", *QEMU_VIRTIO_EXT4, "--root",
                       "/dev/vda", "--no-exitrd", "--no-microcode")  # fmt: skip


@pytest.fixture(scope="module")
def report(image: Path) -> Any:
    result = bookend("size", "--json", str(image))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def content_by_bsdtar(image: Path, tree: Path) -> int:
    """Content bytes as another reader unpacks them: files (each inode once), link targets."""
    subprocess.run(["bsdtar", "-xf", str(image), "-C", str(tree)], check=True)
    total = 0
    inodes = set()
    for directory, dirs, files in os.walk(tree):
        for name in files + dirs:  # os.walk puts a symlink to a directory among the dirs
            path = Path(directory, name)
            st = path.lstat()
            if path.is_symlink():
                total += len(os.fsencode(os.readlink(path)))
            elif path.is_file() and st.st_ino not in inodes:
                inodes.add(st.st_ino)
                total += st.st_size
    return total


def leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """(names from the root, size) of every file in a tree."""
    here = (*path, node["name"])
    if "children" not in node:
        return [(here, node["size"])]
    return [leaf for child in node["children"] for leaf in leaves(child, here)]


def test_sizes_add_up_to_what_another_reader_unpacks(
    image: Path, report: Any, tmp_path: Path
) -> None:
    assert report["content_size"] == content_by_bsdtar(image, tmp_path)
    assert report["file_size"] == image.stat().st_size
    for view in ("directory", "feature"):
        tree = report["views"][view]
        assert tree["size"] == report["content_size"]
        assert sum(size for _, size in leaves(tree)) == tree["size"]


def test_every_file_has_a_feature(report: Any) -> None:
    groups = {group["name"]: group for group in report["views"]["feature"]["children"]}
    assert {"systemd", "udev", "kmod", "filesystems", "manifest"} <= set(groups)
    assert NOT_IN_MANIFEST not in groups
    systemd_files = {"/".join(names[1:]) for names, _ in leaves(groups["systemd"])}
    assert "usr/lib/systemd/systemd" in systemd_files


@pytest.mark.skipif(not DPKG.is_dir(), reason="no dpkg database on this machine")
def test_packages_own_the_libraries_and_the_kernel_its_modules(report: Any) -> None:
    tree = report["views"]["package"]
    owner = {names[-1]: names[1] for names, _ in leaves(tree)}
    assert owner["libc.so.6"].startswith("libc6")
    assert owner["manifest.json"] == NO_PACKAGE  # bookend wrote it
    modules = [names for names, _ in leaves(tree) if names[-1].endswith(".ko")]
    assert modules and all(names[1] == f"linux-image-{KVER}" for names in modules)


# --- the HTML treemap in a browser ------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture(scope="module")
def page(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "size.html"
    result = bookend("size", str(image), "--html", str(out))
    assert result.returncode == 0, result.stderr
    return out


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    width, height = WINDOW
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         f"--window-size={width},{height}", *args],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip


@needs_chromium
def test_screenshot_shows_a_colourful_map(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "size.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == WINDOW
    pixels = collections.Counter(row[i : i + 3] for row in rows for i in range(0, len(row), 3))
    assert len(pixels) > 200  # text, borders and a colour per group, not a blank page
    assert pixels.most_common(1)[0][1] < 0.5 * width * height


class Boxes(HTMLParser):
    """The treemap's boxes in a dumped DOM: geometry from their style, and their data."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[dict[str, Any]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag != "div" or "box" not in values.get("class", "").split():
            return
        style = dict(re.findall(r"([a-z-]+):\s*([^;]+)", values["style"]))
        self.boxes.append({
            "i": int(values["data-i"]),
            "parent": int(values["data-parent"]),
            "size": int(values["data-size"]),
            "w": float(style["width"].removesuffix("px")),
            "h": float(style["height"].removesuffix("px")),
            "label": "",
        })  # fmt: skip

    def handle_data(self, data: str) -> None:
        if self.boxes and not self.boxes[-1]["label"]:
            self.boxes[-1]["label"] = data


def laid_out(page: Path, view: str, profile: Path) -> list[dict[str, Any]]:
    return boxes_of(chromium(profile, "--dump-dom", f"{page.as_uri()}#{view}").stdout)


def boxes_of(dom: str) -> list[dict[str, Any]]:
    parser = Boxes()
    parser.feed(dom)
    return parser.boxes


@needs_chromium
@pytest.mark.parametrize("view", ["directory", "feature", "package"])
def test_box_areas_are_proportional_to_sizes(
    page: Path, report: Any, view: str, tmp_path: Path
) -> None:
    if report["views"][view] is None:
        pytest.skip(f"no {view} view: {report['notes'][view]}")
    boxes = laid_out(page, view, tmp_path / "profile")
    assert len(boxes) > 50
    assert all(box["w"] > 0 and box["h"] > 0 for box in boxes)
    top = [box for box in boxes if box["parent"] < 0]
    width, height = WINDOW
    assert sum(box["w"] * box["h"] for box in top) > 0.6 * width * height  # fills the page
    siblings: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for box in boxes:
        siblings[box["parent"]].append(box)
    compared = 0
    for group in siblings.values():
        # Within one box, area per byte is the same for every child; tiny boxes aside,
        # where the style's rounding of a pixel fraction would dominate.
        ratios = [b["w"] * b["h"] / b["size"] for b in group if b["w"] * b["h"] > 100]
        if len(ratios) > 1:
            compared += len(ratios)
            assert max(ratios) / min(ratios) == pytest.approx(1, rel=0.01)
    assert compared > 20
    # The biggest box is labelled with its name (merged with a lone subdirectory's).
    biggest = max(top, key=lambda box: box["size"])
    label = biggest["label"]
    names = {child["name"] for child in report["views"][view]["children"]}
    assert any(label == name or label.startswith(name + "/") for name in names), label


@needs_chromium
def test_the_address_zooms_into_a_directory(page: Path, report: Any, tmp_path: Path) -> None:
    dom = chromium(tmp_path / "profile", "--dump-dom", f"{page.as_uri()}#directory/usr").stdout
    assert re.search(r'<span class="here">usr \u2014 [0-9.]+ MB \(', dom)
    usr = next(c for c in report["views"]["directory"]["children"] if c["name"] == "usr")
    top = [box for box in boxes_of(dom) if box["parent"] < 0]
    assert max(box["size"] for box in top) == usr["children"][0]["size"]
    assert sum(box["size"] for box in top) <= usr["size"]
