"""What every test tier shares."""

from __future__ import annotations

import os
from pathlib import Path

# The tests run `python -m bookend` in subprocesses, often from another directory: put
# this checkout first on their path, or they would import whichever bookend is
# installed (pip's editable install points at one worktree only).
CHECKOUT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
)
