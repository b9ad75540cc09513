"""The one door for subprocesses: argv lists, no shell, a scrubbed environment."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bookend.errors import CommandError

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

# Only what a tool needs to behave predictably; the caller's locale and
# tool-specific variables (e.g. ZSTD_CLEVEL) must not change our output.
SCRUBBED_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_SCRUBBED_ENV = {"PATH": SCRUBBED_PATH, "LC_ALL": "C.UTF-8"}


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv and return its result; raise CommandError with the stderr tail on failure."""
    import subprocess  # here: a build that finds depmod's index in the scan cache runs nothing

    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    try:
        result = subprocess.run(
            args,
            env={**_SCRUBBED_ENV, **(env or {})},
            cwd=cwd,
            input=input_bytes,
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        raise CommandError(f"{args[0]}: cannot run: {exc.strerror}") from exc
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        detail = " | ".join(tail) or "no error output"
        raise CommandError(f"{shlex.join(args)}: exit status {result.returncode}: {detail}")
    return result
