"""udev rules files: where they are, which programs they run, and which file of a
sysroot serves a purpose.

Distributions ship the same rules under different names: Debian renames lvm2's
10-dm.rules to 55-dm.rules, 11-dm-lvm.rules to 56-lvm.rules, 13-dm-disk.rules to
60-persistent-storage-dm.rules and 69-dm-lvm.rules to 69-lvm.rules; Fedora and Arch
keep lvm2's names. So a feature asks for "@PURPOSE" (see PURPOSES), and the sysroot's
file is found by its known names, then by what it contains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bookend.sysroot import Sysroot
from bookend.units import logical_lines

RULES_DIRS = ("/etc/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
# A program named without a slash is looked up here by udevd.
UDEV_PROGRAM_DIRS = ("/usr/lib/udev", "/lib/udev")

# RUN and PROGRAM run programs unless {builtin}; IMPORT runs one only as {program}.
PROGRAM_KEY = re.compile(
    r'\b(?:RUN(?:\{program\})?|PROGRAM|IMPORT\{program\})\s*(?:\+=|:=|==|!=|=)\s*"([^"]*)"'
)


PURPOSE_PREFIX = "@"


@dataclass(frozen=True)
class RulesPurpose:
    """One job a rules file does, whatever the distribution calls the file."""

    help: str
    names: tuple[str, ...]  # known file names, Debian's first
    content: str  # a regular expression only such a file matches (comments left out)

    @property
    def looked_for(self) -> str:
        return f"no file named {' or '.join(self.names)}, none matching /{self.content}/"


PURPOSES = {
    "dm": RulesPurpose(
        "device-mapper flags, names and udev sync", ("55-dm.rules", "10-dm.rules"),
        r"dmsetup\s+udevflags",
    ),
    "dm-disk": RulesPurpose(
        "/dev/disk/by-* links of device-mapper devices",
        ("60-persistent-storage-dm.rules", "13-dm-disk.rules"), r"disk/by-id/dm-name-",
    ),
    "dm-notify": RulesPurpose(
        "telling dmsetup a device-mapper event is processed", ("95-dm-notify.rules",),
        r"dmsetup\s+udevcomplete",
    ),
    "lvm": RulesPurpose(
        "LVM volume names for device-mapper devices", ("56-lvm.rules", "11-dm-lvm.rules"),
        r"dmsetup\s+splitname",
    ),
    "lvm-activation": RulesPurpose(
        "LVM event activation: pvscan on each physical volume",
        ("69-lvm.rules", "69-dm-lvm.rules", "69-lvm-metad.rules", "69-dm-lvm-metad.rules"),
        r"lvm\s+pvscan|pvscan\s+--cache",
    ),
    "md-arrays": RulesPurpose(
        "MD array properties and links", ("63-md-raid-arrays.rules",), r"mdadm\s+--detail"
    ),
    "md-assembly": RulesPurpose(
        "incremental assembly of MD members",
        ("64-md-raid-assembly.rules", "65-md-incremental.rules"),
        r"mdadm\s+(--incremental|-I)\b",
    ),
}  # fmt: skip


def find_rules(sysroot: Sysroot, name: str) -> str | None:
    """The rules file called name, or serving the purpose "@PURPOSE"; None if none."""
    if name.startswith(PURPOSE_PREFIX):
        purpose = PURPOSES.get(name.removeprefix(PURPOSE_PREFIX))
        return None if purpose is None else find_purpose(sysroot, purpose)
    for directory in RULES_DIRS:
        path = f"{directory}/{name}"
        if sysroot.exists(path):
            return path
    return None


def find_purpose(sysroot: Sysroot, purpose: RulesPurpose) -> str | None:
    """The first known name the sysroot has, else the first rules file (in name order,
    as udev reads them) whose rules match the purpose's content."""
    for name in purpose.names:
        found = find_rules(sysroot, name)
        if found:
            return found
    pattern = re.compile(purpose.content)
    names = sorted({n for d in RULES_DIRS for n in sysroot.listdir(d) if n.endswith(".rules")})
    for name in names:
        path = find_rules(sysroot, name)
        text = sysroot.read_text(path) if path else None
        if text and any(pattern.search(line) for line in logical_lines(text)):
            return path
    return None


def looked_for(name: str) -> str:
    """What a failed lookup of name searched for, for its error."""
    if not name.startswith(PURPOSE_PREFIX):
        return ""
    purpose = PURPOSES.get(name.removeprefix(PURPOSE_PREFIX))
    if purpose is None:
        known = ", ".join(PURPOSE_PREFIX + key for key in PURPOSES)
        return f": no such purpose (known: {known})"
    return f" ({purpose.help}): {purpose.looked_for}"


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
