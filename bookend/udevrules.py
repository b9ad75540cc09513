"""udev rules files: where they are and which programs they run."""

from __future__ import annotations

import re

from bookend.sysroot import Sysroot
from bookend.units import logical_lines

RULES_DIRS = ("/etc/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
# A program named without a slash is looked up here by udevd.
UDEV_PROGRAM_DIRS = ("/usr/lib/udev", "/lib/udev")

# RUN and PROGRAM run programs unless {builtin}; IMPORT runs one only as {program}.
PROGRAM_KEY = re.compile(
    r'\b(?:RUN(?:\{program\})?|PROGRAM|IMPORT\{program\})\s*(?:\+=|:=|==|!=|=)\s*"([^"]*)"'
)


def find_rules(sysroot: Sysroot, name: str) -> str | None:
    for directory in RULES_DIRS:
        path = f"{directory}/{name}"
        if sysroot.exists(path):
            return path
    return None


def rule_programs(text: str) -> list[str]:
    """The program (first word) of every RUN, PROGRAM and IMPORT{program} in the text."""
    programs: list[str] = []
    for line in logical_lines(text):
        for value in PROGRAM_KEY.findall(line):
            words = value.split()
            # "$env{...}" or "%k" at the start is decided at event time; nothing to follow.
            if words and not words[0].startswith(("$", "%")) and words[0] not in programs:
                programs.append(words[0])
    return programs
