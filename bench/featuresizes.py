#!/usr/bin/env python3
"""What features add to bookend's images: network roots, and the ways to unlock a root.

    python3 bench/featuresizes.py [--group network|unlock] [--kver VERSION]
                                  [--mode hostonly|generic ...] [--out FILE.md]

Builds the initrd and the exitrd for the installed kernel as a base image (the QEMU
virtio/ext4 set the other benchmark builds) and the base with each feature of a group,
in each mode, and writes a markdown table per mode and image of the sizes (compressed,
content, files) and of what each adds over base and over the group's reference image:
- network (default; issue 14): base + `network`, and base + each feature that serves a
  network storage kind (nbd, iscsi, nfs: found from the feature declarations), compared
  with base + network;
- unlock (issue 15): base + `luks`, and luks + each way to open it (tpm2, fido2, pkcs11,
  ssh with a key of the run's own, vconsole with a German keymap, plymouth with the
  sysroot's theme and with spinner), compared with base + luks.
Default report: bench/results/DATE-GROUP.md. A build takes seconds: the whole run a
minute or two, with no guest. Progress goes to stderr; nothing is written to /boot.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the checkout importable (bench, bookend, harness).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import ImageFacts, read_image_facts, run_build
from bench.tools import FEATURE_SETS, Command, base_env, bookend_argv, progress, write_report
from bookend.archive.compress import DEFAULT_LEVELS, EXITRD_DEFAULT_LEVELS, Compression
from bookend.features import ALL
from bookend.storage import NETWORK_STORAGE
from harness.qemu import installed_kernels

MODES = ("hostonly", "generic")
BASE_ARGS = FEATURE_SETS[0].bookend_args  # the plain ext4 set: virtio disk, ext4
MIB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    name: str
    features: tuple[str, ...]  # added to the base with --add-feature
    # Other build options the features need (a key for ssh, a keymap, the splash).
    options: tuple[str, ...] = ()


BASE = Variant("base", ())
WITH_NETWORK = Variant("base + network", ("network",))
WITH_LUKS = Variant("base + luks", ("luks",))


def network_storage_features() -> list[str]:
    """The features serving a network storage kind, by their own declaration."""
    return [name for name, feature in ALL.items() if feature.serves in NETWORK_STORAGE]


def network_variants(work: Path | None = None) -> list[Variant]:
    """Base, base + network, then base + each network storage feature."""
    storage = [Variant(f"base + {name}", (name,)) for name in network_storage_features()]
    return [BASE, WITH_NETWORK, *storage]


def ssh_public_key(work: Path) -> Path:
    """A key of the run's own for the ssh rows (any key does: only its size counts)."""
    key = work / "ssh-key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)  # fmt: skip
    return key.with_name("ssh-key.pub")


def unlock_variants(work: Path) -> list[Variant]:
    """Base, base + luks, then luks with each way to open it."""

    def on_luks(name: str, *options: str, label: str = "") -> Variant:
        return Variant(f"base + luks + {label or name}", ("luks", name), options)

    return [
        BASE,
        WITH_LUKS,
        *(on_luks(name) for name in ("tpm2", "fido2", "pkcs11")),
        on_luks("ssh", "--ssh-authorized-keys", str(ssh_public_key(work))),
        on_luks("vconsole", "--keymap", "de", label="vconsole (de)"),
        on_luks("plymouth", "--splash", label="plymouth (sysroot's theme)"),
        on_luks("plymouth", "--splash", "--splash-theme", "spinner", label="plymouth (spinner)"),
    ]


@dataclass(frozen=True)
class Group:
    """A set of images to compare: each row over base, and over the reference."""

    title: str
    reference: Variant
    variants: Callable[[Path], list[Variant]]


GROUPS = {
    "network": Group("What network roots add to the images", WITH_NETWORK, network_variants),
    "unlock": Group("What the ways to unlock a LUKS root add", WITH_LUKS, unlock_variants),
}


@dataclass(frozen=True)
class Sizes:
    compressed: int  # bytes of the image file
    content: int  # bytes of file content, each hard-link group once
    files: int  # archive entries

    @classmethod
    def of(cls, facts: ImageFacts) -> Sizes:
        return cls(facts.compressed, facts.uncompressed, facts.entries)

    def minus(self, other: Sizes) -> Sizes:
        return Sizes(
            self.compressed - other.compressed, self.content - other.content,
            self.files - other.files,
        )  # fmt: skip


@dataclass(frozen=True)
class Built:
    variant: Variant
    mode: str
    initrd: Sizes
    exitrd: Sizes


def build(variant: Variant, mode: str, kver: str, work: Path) -> Built:
    """One `bookend build` of the variant; its initrd and exitrd read back."""
    stem = f"{mode}-{''.join(c if c.isalnum() else '-' for c in variant.name)}"
    initrd, exitrd = work / f"initrd-{stem}.img", work / f"exitrd-{stem}.img"
    extra = [arg for name in variant.features for arg in ("--add-feature", name)]
    options = (*BASE_ARGS, *extra, *variant.options, "--exitrd-output", str(exitrd))
    argv = bookend_argv(kver, initrd, DEFAULT_LEVELS[Compression.ZSTD], mode, options)
    # ssh's host key is made once and kept in bookend's state directory: the run's own.
    env = {**base_env(work), "BOOKEND_STATE_DIR": str(work / "state")}
    run_build(Command(argv, env, initrd), work / "logs" / f"{stem}.log")
    return Built(variant, mode, Sizes.of(read_image_facts(initrd)),
                 Sizes.of(read_image_facts(exitrd)))  # fmt: skip


def measure(kver: str, modes: Sequence[str], work: Path, chosen: Sequence[Variant]) -> list[Built]:
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    built = []
    for mode in modes:
        for variant in chosen:
            progress(f"building {mode} {variant.name}")
            built.append(build(variant, mode, kver, work))
    return built


def _mib(size: int) -> str:
    return f"{size / MIB:.2f} MiB"


def _delta(change: Sizes) -> str:
    sign = "+" if change.compressed >= 0 else "-"
    content = f"{'+' if change.content >= 0 else '-'}{_mib(abs(change.content))}"
    return f"{sign}{_mib(abs(change.compressed))} ({content}, {change.files:+d} files)"


def render_table(
    built: Sequence[Built], mode: str, image: str, reference: Variant = WITH_NETWORK
) -> list[str]:
    """One markdown table: every variant of mode, for "initrd" or "exitrd"."""
    rows = {b.variant: getattr(b, image) for b in built if b.mode == mode}
    base, referred = rows.get(BASE), rows.get(reference)
    lines = [
        f"| {image} ({mode}) | compressed | content | files | over base | over {reference.name} |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for variant, sizes in rows.items():
        over_base = _delta(sizes.minus(base)) if base and variant != BASE else "-"
        beyond = variant not in (BASE, reference)
        over_reference = _delta(sizes.minus(referred)) if referred and beyond else "-"
        lines.append(f"| {variant.name} | {_mib(sizes.compressed)} | {_mib(sizes.content)} | "
                     f"{sizes.files} | {over_base} | {over_reference} |")  # fmt: skip
    return lines


def render_report(built: Sequence[Built], kver: str, group: str = "network") -> str:
    modes = list(dict.fromkeys(b.mode for b in built))
    chosen = GROUPS[group]
    options = "; a row's other options (a key, a keymap, the splash) follow its features"
    lines = [
        f"# {chosen.title}",
        "",
        f"`python3 bench/featuresizes.py --group {group}`, {time.strftime('%Y-%m-%d')}, kernel "
        f"{kver}, {platform.machine()}, zstd level {DEFAULT_LEVELS[Compression.ZSTD]} "
        f"(the exitrd: its own default, zstd {EXITRD_DEFAULT_LEVELS[Compression.ZSTD]}). Base: "
        f"`bookend build --MODE {' '.join(BASE_ARGS)}`; each other row adds "
        f"`--add-feature NAME` for its features{options if group != 'network' else ''}. "
        "Content counts file bytes, each hard-link group once; an entry is "
        "a file, directory, symlink or device node. `-`: nothing to compare with.",
    ]
    for mode in modes:
        for image in ("initrd", "exitrd"):
            lines += ["", *render_table(built, mode, image, chosen.reference)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/featuresizes.py", description="What each feature of a group adds."
    )
    parser.add_argument("--group", choices=GROUPS, default="network",
                        help="network roots (default) or the ways to unlock a root")  # fmt: skip
    parser.add_argument("--kver", help="kernel version (default: the newest in /boot)")
    parser.add_argument("--mode", action="append", choices=MODES,
                        help="hostonly or generic (repeatable; default both)")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="report file (default bench/results/DATE-GROUP.md)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="work directory (default: a new one in /var/tmp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kernels = installed_kernels()
    if args.kver is None and not kernels:
        print("bench/featuresizes.py: no kernel in /boot; name one with --kver", file=sys.stderr)
        return 2
    kver = args.kver or kernels[-1].version
    work = args.work or Path(tempfile.mkdtemp(prefix="bookend-featuresizes-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    group = GROUPS[args.group]
    built = measure(kver, args.mode or MODES, work, group.variants(work))
    text = render_report(built, kver, args.group)
    write_report(text, args.out, f"-{args.group}", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
