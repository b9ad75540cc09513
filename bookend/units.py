"""systemd unit files: where they are and which programs their Exec*= lines run."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bookend.sysroot import Sysroot

# Searched in systemd's order of precedence; the first file found is the one used.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
GENERATOR_DIRS = ("/usr/lib/systemd/system-generators", "/lib/systemd/system-generators")

# Where systemd looks up an Exec*= program given without a slash.
EXEC_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

EXEC_KEYS = re.compile(
    r"^(ExecStart|ExecStartPre|ExecStartPost|ExecStop|ExecStopPost|ExecReload|ExecCondition)"
    r"\s*=\s*(.*)$"
)
EXEC_PREFIX = re.compile(r"^[-@:+!|]+")


@dataclass(frozen=True)
class ExecLine:
    program: str  # as written: an absolute path or a bare name
    may_fail: bool  # "-" prefix: systemd ignores its failure, so a missing program is no error
    line: str  # the unit line, for error messages


def find_unit(sysroot: Sysroot, name: str) -> str | None:
    """The image path of a unit's file; an instance falls back to its template."""
    template = template_of(name)
    candidates = [name, *([template] if template else [])]
    for candidate in candidates:
        for directory in UNIT_DIRS:
            path = f"{directory}/{candidate}"
            if sysroot.lstat(path) is not None or sysroot.exists(path):
                return path
    return None


def template_of(name: str) -> str | None:
    """The template an instance is made from (foo@bar.service: foo@.service), or None."""
    match = re.fullmatch(r"(.+@)[^.]+(\..+)", name)
    return match.group(1) + match.group(2) if match else None


def dropin_paths(sysroot: Sysroot, name: str) -> list[str]:
    """Drop-in files for a unit (name.d/*.conf) in every unit directory; an instance's
    template's come first, as systemd applies them."""
    template = template_of(name)
    return [
        f"{directory}/{unit}.d/{entry}"
        for unit in ([template] if template else []) + [name]
        for directory in UNIT_DIRS
        for entry in sysroot.listdir(f"{directory}/{unit}.d")
        if entry.endswith(".conf")
    ]


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";"))
    ]


def exec_lines(text: str) -> list[ExecLine]:
    """The program of every Exec*= line in a unit file's text."""
    found = []
    for line in logical_lines(text):
        match = EXEC_KEYS.match(line)
        if not match or not match.group(2).strip():
            continue  # an empty ExecStart= resets the list; nothing to include
        value = match.group(2).strip()
        prefix = EXEC_PREFIX.match(value)
        flags = prefix.group(0) if prefix else ""
        words = value[len(flags) :].split()
        if words:
            found.append(ExecLine(words[0], "-" in flags, line))
    return found


def wants_links(sysroot: Sysroot, unit: str, included: set[str]) -> list[str]:
    """Paths of the unit's .wants/.requires links that point at included units."""
    return [
        f"{directory}/{unit}.{kind}/{entry}"
        for directory in UNIT_DIRS
        for kind in ("wants", "requires")
        for entry in sysroot.listdir(f"{directory}/{unit}.{kind}")
        if entry in included
    ]
