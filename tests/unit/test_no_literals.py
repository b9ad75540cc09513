"""No Debian or x86-64 assumption written into bookend/: architecture facts live in
bookend/arches.py (and Debian's multiarch triplets only there), found for a sysroot
from its own ELF files; everything else reads the sysroot."""

from __future__ import annotations

import re
from pathlib import Path

import bookend

SOURCE = Path(bookend.__file__).parent
# Multiarch triplets, Debian architecture names, x86-64 by name, systemd-boot stub file
# names and the kernel's per-architecture module directories.
LITERAL = re.compile(
    r"\b[a-z0-9_]+-linux-gnu[a-z]*\b|\b(?:amd64|arm64|aarch64|armhf|i386|ppc64el|x86_64)\b"
    r"|\blinux[a-z0-9]+\.efi\.stub\b|kernel/arch/[a-z0-9]+/"
)
# The tables themselves, and what only looks like one.
ALLOWED_FILES = {"arches.py"}
ALLOWED_LINES = {
    # kbd's keymap tree is called i386 whatever the machine: a directory name, not a CPU.
    ("console.py", 'bases += [f"{root}/include/{name}", f"{root}/i386/include/{name}"]'),
}


def literals() -> list[str]:
    found = []
    for path in sorted(SOURCE.rglob("*")):
        if not path.is_file() or path.suffix not in (".py", ".toml", ".html", ".sh", ".txt"):
            continue
        relative = path.relative_to(SOURCE).as_posix()
        if relative in ALLOWED_FILES:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if LITERAL.search(line) and (path.name, line.strip()) not in ALLOWED_LINES:
                found.append(f"bookend/{relative}:{number}: {line.strip()}")
    return found


def test_no_debian_or_x86_literal_outside_the_architecture_table() -> None:
    assert literals() == []


def test_the_pattern_catches_what_it_is_for() -> None:
    caught = [
        "/usr/lib/x86_64-linux-gnu/libmount.so.1",
        "aarch64-linux-gnu",
        "arm-linux-gnueabihf",
        "6.1.0-28-amd64",
        "linuxx64.efi.stub",
        "kernel/arch/x86/crypto/",
    ]
    assert all(LITERAL.search(text) for text in caught)
    assert not any(LITERAL.search(text) for text in ("/usr/lib64", "EM_X86_64", "x86-64"))
