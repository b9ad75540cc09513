"""`bookend size`: what takes the space in an image, by directory, feature and package.

Sizes are content bytes as the image holds them uncompressed: a regular file's content
(a hard-link group's once, at its first path), a symlink's target. Directories and
device nodes hold none. A path stored twice counts as the kernel ends up with it: the
later entry.

Three views, each a tree of SizeNode:
- directory: the image's own directory tree;
- feature: grouped by what pulled each file in, from the manifest bookend writes into
  its images (foreign images have none, so that view is missing and says why);
- package: grouped by the package that owns each file, from a sysroot's dpkg, rpm or
  pacman database (bookend.packages), with each group's files as a directory tree
  again (so a kernel package shows its modules, a firmware package its firmware).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookend.archive.reader import read_image
from bookend.closure import Closure
from bookend.errors import ArchiveError
from bookend.inspect.image import Scan, clean_path, open_image, printable, scan_image
from bookend.manifest import MANIFEST_PATH, closure_from_manifest
from bookend.microcode import EARLY_DIRS
from bookend.packages import PackageIndex, load_package_index

VIEWS = ("directory", "feature", "package")
NO_PACKAGE = "(no package)"
NOT_IN_MANIFEST = "(not in the manifest)"
EARLY_MICROCODE = "early microcode"
MANIFEST_LIMIT = 64 << 20  # a manifest bigger than this is not one bookend wrote


@dataclass
class SizeNode:
    """A directory or group and what it holds; a leaf is one file."""

    name: str
    size: int = 0  # content bytes in and below it
    files: int = 0  # files in and below it
    children: dict[str, SizeNode] = field(default_factory=dict)
    detail: str = ""  # for a file: what more there is to say (why it is in)

    def add(self, parts: list[str], size: int, detail: str = "") -> None:
        """Count a file of size bytes at parts below this node."""
        node = self
        node.size += size
        node.files += 1
        for part in parts:
            node = node.children.setdefault(part, SizeNode(part))
            node.size += size
            node.files += 1
        node.detail = detail

    def biggest_first(self) -> list[SizeNode]:
        return sorted(self.children.values(), key=lambda n: (-n.size, n.name))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "size": self.size, "files": self.files}
        if self.detail:
            data["detail"] = self.detail
        if self.children:
            data["children"] = [child.to_json() for child in self.biggest_first()]
        return data


@dataclass(frozen=True)
class SizeReport:
    image: Path
    file_size: int  # the image file, compressed
    compressions: tuple[str, ...]  # of its segments, in order
    views: dict[str, SizeNode | None]  # None where the view cannot be made
    notes: dict[str, str]  # what each view is made from, or why it is missing

    @property
    def total(self) -> int:
        return self.views["directory"].size if self.views["directory"] else 0


# --- what each file takes ---------------------------------------------------------------


def file_sizes(scan: Scan) -> dict[str, int]:
    """Absolute image path -> content bytes, for every file and symlink."""
    sizes = {}
    for entry in scan.final().values():
        if entry.kind not in ("file", "link") or entry.path == ".":
            continue
        # A hard link's content is stored once; the group's first path carries it.
        sizes["/" + entry.path] = 0 if entry.hardlink is not None else entry.size
    return sizes


def path_parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def directory_tree(sizes: dict[str, int], name: str = "/") -> SizeNode:
    root = SizeNode(name)
    for path, size in sizes.items():
        root.add(path_parts(path), size)
    return root


def grouped_tree(
    sizes: dict[str, int],
    group_of: dict[str, str],
    name: str,
    details: dict[str, str] | None = None,
) -> SizeNode:
    """root -> group -> the group's files as a directory tree."""
    root = SizeNode(name)
    for path, size in sizes.items():
        root.add([group_of[path], *path_parts(path)], size, (details or {}).get(path, ""))
    return root


def collapse_chains(node: SizeNode) -> SizeNode:
    """A copy in which a directory whose only child is a directory is merged with it
    ("usr" > "lib" > "systemd" becomes "usr/lib/systemd"), so a
    treemap or a listing spends no space on levels that divide nothing."""
    children = {}
    for child in node.children.values():
        merged = child
        while len(merged.children) == 1:
            (only,) = merged.children.values()
            if not only.children:
                break  # a single file stays a file of its directory
            merged = SizeNode(f"{merged.name}/{only.name}", only.size, only.files, only.children)
        collapsed = collapse_chains(merged)
        children[collapsed.name] = collapsed
    return SizeNode(node.name, node.size, node.files, children, node.detail)


def collapse_groups(tree: SizeNode) -> SizeNode:
    """collapse_chains for a grouped view: each group keeps its own name."""
    groups = {name: collapse_chains(group) for name, group in tree.children.items()}
    return SizeNode(tree.name, tree.size, tree.files, groups, tree.detail)


# --- features, from the manifest --------------------------------------------------------

# What starts a why-chain, as bookend.plan, bookend.closure and the features word it,
# and the group it belongs to. The first match wins; a chain that matches none is
# grouped under its words up to a colon ("hostonly: ...", "exitrd: ..."), so a reason
# added later still shows, only less tidily.
_ORIGINS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^feature ([\w.-]+)"), r"\1"),
    (re.compile(r"^filesystem "), "filesystems"),
    (re.compile(r"^mode generic"), "generic drivers"),
    (re.compile(r"^modules \("), "modules (configured)"),
    (re.compile(r"^driver_classes \("), "driver classes (configured)"),
    (re.compile(r"^files \("), "files (configured)"),
    (re.compile(r"^module index"), "module index"),
    (re.compile(r"^bookend:"), "manifest"),
)


def origin_group(reason: str) -> str:
    """The group of a chain's first reason: "module ext4 <- feature systemd" -> systemd."""
    origin = reason.rsplit(" <- ", 1)[-1].strip()
    for pattern, group in _ORIGINS:
        match = pattern.match(origin)
        if match:
            return match.expand(group)
    return origin.partition(":")[0]


def feature_of(path: str, closure: Closure) -> str:
    """The group whose request pulled path into the image."""
    chain = closure.why(path)
    if chain:
        return origin_group(chain[-1][1])
    if path.startswith(EARLY_DIRS[-1] + "/"):
        return EARLY_MICROCODE  # its own segment, ahead of the archive and its manifest
    return NOT_IN_MANIFEST


def read_manifest(image: Path) -> Closure | None:
    """The image's manifest as a Closure, or None if the image has none."""
    wanted = clean_path(MANIFEST_PATH)
    data = None
    with open_image(image) as raw:
        for header, body in read_image(raw, str(image)):
            if clean_path(header.path) != wanted:
                continue
            if header.size > MANIFEST_LIMIT:
                raise ArchiveError(f"{image}: {MANIFEST_PATH}: {header.size} bytes, too big")
            data = body.read()  # the last one stored wins, as for the kernel
    return closure_from_manifest(data, str(image)) if data is not None else None


def feature_tree(sizes: dict[str, int], closure: Closure) -> SizeNode:
    """Each file under the group that pulled it in, with its why-chain as its detail.

    The manifest records one chain per file, the first the build found: a library
    several features need is counted under one of them, and its chain says which.
    """
    groups = {path: feature_of(path, closure) for path in sizes}
    chains = {path: closure.format_why(path) for path in sizes if path in closure.entries}
    return grouped_tree(sizes, groups, "features", chains)


# --- packages, from the sysroot's package databases --------------------------------------


def package_tree(sizes: dict[str, int], index: PackageIndex) -> SizeNode:
    groups = {}
    for path in sizes:
        package = index.owner(path)
        groups[path] = package.name if package else NO_PACKAGE
    return grouped_tree(sizes, groups, "packages")


def package_note(index: PackageIndex, sysroot: Path) -> str:
    if not index.databases:
        return f"no dpkg, rpm or pacman database in {sysroot}"
    read = ", ".join(f"{db.kind} {db.path}" for db in index.databases)
    if not index.owners:
        return f"no package lists a file in {read}"
    return f"the package owning each file, from {read}"


# --- the report -------------------------------------------------------------------------


def size_report(image: Path, sysroot: Path = Path("/")) -> SizeReport:
    scan = scan_image(image)
    sizes = file_sizes(scan)
    views: dict[str, SizeNode | None] = {"directory": directory_tree(sizes)}
    notes = {"directory": "the image's directory tree"}
    closure = read_manifest(image)
    if closure is None:
        views["feature"] = None
        notes["feature"] = f"no {MANIFEST_PATH}: not built by bookend, so no features to tell"
    else:
        views["feature"] = feature_tree(sizes, closure)
        notes["feature"] = (
            f"what pulled each file in, from {MANIFEST_PATH}; a file several need is "
            "counted once, under the first"
        )
    index = load_package_index(sysroot)
    views["package"] = package_tree(sizes, index) if index.owners else None
    notes["package"] = package_note(index, sysroot)
    compressions = tuple(segment.compression for segment in scan.segments)
    return SizeReport(image, scan.file_size, compressions, views, notes)


def report_json(report: SizeReport) -> dict[str, Any]:
    return {
        "image": str(report.image),
        "file_size": report.file_size,
        "compression": list(report.compressions),
        "content_size": report.total,
        "views": {view: tree.to_json() if tree else None for view, tree in report.views.items()},
        "notes": report.notes,
    }


def human_size(size: int) -> str:
    """Decimal units, as `bookend build` reports sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


SUMMARY_GROUPS = 12  # groups listed per view
SUMMARY_SHARE = 0.02  # directories smaller than this share of the total are left out
SUMMARY_DEPTH = 4


def format_summary(report: SizeReport) -> str:
    total = report.total
    lines = [
        f"{printable(str(report.image))}: {human_size(report.file_size)} on disk "
        f"({', '.join(report.compressions)}), {human_size(total)} of content in "
        f"{_files(report)} files",
    ]
    directory = report.views["directory"]
    if directory is not None:
        lines += ["", "By directory:"]
        lines += _directory_lines(collapse_chains(directory), total, 0, "")
    for view in ("feature", "package"):
        lines += ["", f"By {view} ({report.notes[view]}):"]
        tree = report.views[view]
        lines += _group_lines(tree, total) if tree else ["  none"]
    return "\n".join(lines) + "\n"


def _files(report: SizeReport) -> int:
    directory = report.views["directory"]
    return directory.files if directory else 0


def _share_line(node_size: int, total: int, label: str) -> str:
    share = 100 * node_size / total if total else 0.0
    return f"  {human_size(node_size):>9} {share:5.1f}%  {printable(label)}"


def _directory_lines(node: SizeNode, total: int, depth: int, prefix: str) -> list[str]:
    """A du-like listing: each directory with its big subdirectories indented below."""
    path = "/" if depth == 0 else f"{prefix}/{node.name}".replace("//", "/")
    lines = [_share_line(node.size, total, "  " * depth + path)]
    if depth >= SUMMARY_DEPTH:
        return lines
    for child in node.biggest_first():
        if child.children and child.size >= SUMMARY_SHARE * total:
            lines += _directory_lines(child, total, depth + 1, path)
    return lines


def _group_lines(tree: SizeNode, total: int) -> list[str]:
    groups = tree.biggest_first()
    lines = [_share_line(g.size, total, g.name) for g in groups[:SUMMARY_GROUPS]]
    rest = groups[SUMMARY_GROUPS:]
    if rest:
        label = f"{len(rest)} more"
        lines.append(_share_line(sum(g.size for g in rest), total, label))
    return lines
