"""The debug shell: `rd.systemd.debug_shell` on the kernel command line starts a root
shell early in the boot, with no password, while the boot goes on.

systemd-debug-generator (in every image) enables debug-shell.service when the command
line asks; this feature brings the unit and the shell it runs (bash). systemd 252 opens
it on tty9 only; 256 and later take a terminal, e.g. `rd.systemd.debug_shell=ttyS1`.
Anyone who can edit the kernel command line then owns the machine, so it is not in an
image unless asked for (`--add-feature debug`).
"""

from __future__ import annotations

from bookend.features.base import Feature

FEATURE = Feature(
    name="debug",
    help="debug-shell.service for rd.systemd.debug_shell (a root shell on tty9, or the "
    "terminal named with systemd 256 and later); not in an image unless asked for",
    units=("debug-shell.service",),
    generators=("?systemd-debug-generator",),
)
