"""Fixture sysroots holding real ELF programs and libraries, compiled with gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HOST_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
HOST_LOADER = Path("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")


def compile_c(source: str, output: Path, *flags: str) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    c_file = output.with_name(output.name + ".c")
    c_file.write_text(source)
    subprocess.run(["gcc", "-o", str(output), str(c_file), *flags], check=True)
    c_file.unlink()
    return output


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
