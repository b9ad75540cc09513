"""Fixture sysroots holding real ELF programs and libraries, compiled with gcc."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.cc import compile_c as compile_c  # the tests' one compiler call

HOST_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
HOST_LOADER = Path("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")

# https://systemd.io/ELF_DLOPEN_METADATA: the note's owner and type, written out here
# rather than taken from bookend.elf, so a wrong constant there fails the tests.
DLOPEN_NOTE_OWNER = "FDO"
DLOPEN_NOTE_TYPE = 0x407C0C0A


def install_libc(root: Path) -> None:
    """The C library and loader at Debian's paths, /lib64 link included."""
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True, exist_ok=True)
    shutil.copy(HOST_LIBC, multiarch / "libc.so.6")
    shutil.copy(HOST_LOADER, multiarch / "ld-linux-x86-64.so.2")
    (root / "usr/lib64").mkdir(exist_ok=True)
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    (root / "lib64").symlink_to("usr/lib64")


def shared_library(root: Path, directory: str, soname: str, body: str, *flags: str) -> Path:
    """lib at DIR/soname.0 with a soname link, as distributions install them."""
    real = root / directory.lstrip("/") / f"{soname}.0"
    compile_c(body, real, "-shared", "-fPIC", f"-Wl,-soname,{soname}", *flags)
    (real.parent / soname).symlink_to(real.name)
    return real


def c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dlopen_note_c(payload: str) -> str:
    """C declaring one .note.dlopen note with payload (JSON) as its description, laid out
    by hand as the specification has it; append the code of the program or library."""
    return f"""
#include <stdint.h>
#define PAYLOAD {c_string(payload)}
struct dlopen_note {{
    uint32_t namesz, descsz, type;
    char name[4];
    char desc[(sizeof(PAYLOAD) + 3) & ~3u];
}};
__attribute__((section(".note.dlopen"), used, aligned(4)))
static const struct dlopen_note note = {{
    4, sizeof(PAYLOAD), {DLOPEN_NOTE_TYPE:#x}, "{DLOPEN_NOTE_OWNER}", PAYLOAD
}};
"""
