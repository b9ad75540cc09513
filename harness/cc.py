"""C programs the tests put into trees and images, compiled with the host's gcc."""

from __future__ import annotations

import subprocess
from pathlib import Path


def compile_c(source: str, output: Path, *flags: str) -> Path:
    """source compiled to output (its directory made); flags go to gcc as they are."""
    output.parent.mkdir(parents=True, exist_ok=True)
    c_file = output.with_name(output.name + ".c")
    c_file.write_text(source)
    subprocess.run(["gcc", "-o", str(output), str(c_file), *flags], check=True)
    c_file.unlink()
    return output
