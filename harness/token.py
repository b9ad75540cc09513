"""The proof that a boot worked: the real root reports the test's token, then powers off.

The root disk (rootdisk.py) has a unit that prints

    BOOKEND-TOKEN <token> booted-with-initrd=yes systemd-initrd=yes

on the console for the `bookend.token=` of its command line, and powers the guest off.
A token chosen at random for each boot can only come from that boot, so a test that
sees it, and QEMU exit with status 0 after it, knows the initrd handed over to the
real root; anything less is a failure.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from harness.qemu import Boot, BootOptions, boot

# After the token the guest only powers off: seconds for that, on a busy host.
EXIT_LIMIT = 120


def new_token() -> str:
    return secrets.token_hex(8)


def with_token(options: BootOptions, token: str) -> BootOptions:
    """options with bookend.token=token on the kernel command line."""
    return dataclasses.replace(options, append=f"{options.append} bookend.token={token}".strip())


def expect_token(
    vm: Boot,
    token: str,
    timeout: float,
    *,
    systemd_initrd: bool = True,
    exit_timeout: float = EXIT_LIMIT,
    exit_status: int = 0,
) -> re.Match[str]:
    """Wait for the real root's report of token, then for QEMU to exit with exit_status
    (0: a power-off; isa-debug-exit gives another).

    The report must say the root was entered through an initrd, and (unless
    systemd_initrd is False, for other generators' images) through systemd in one.
    """
    # The line's end must have arrived too: the console may have shown only "=y" so far.
    report = vm.expect(
        rf"BOOKEND-TOKEN {token} booted-with-initrd=(\w+) systemd-initrd=(\w+)(?=\s)", timeout
    )
    wanted = ("yes", "yes") if systemd_initrd else ("yes", report.group(2))
    assert report.groups() == wanted, f"the root reported {report.group(0)!r}"
    status = vm.wait_exit(exit_timeout)
    assert status == exit_status, f"QEMU exited with status {status} after the token"
    return report


@dataclass(frozen=True)
class Booted:
    """A finished boot that reported its token."""

    text: str  # the whole console
    seconds: float  # from QEMU's start to its exit

    @property
    def failed_units(self) -> list[str]:
        """Console lines of units that failed (systemd's "[FAILED]" status)."""
        return failed_units(self.text)


def failed_units(text: str) -> list[str]:
    """The console's lines of units that failed (systemd's "[FAILED]" status)."""
    return [line for line in text.splitlines() if "FAILED" in line]


def in_order(text: str, patterns: tuple[str, ...]) -> None:
    """Assert that each pattern matches the console after the previous one's match, as
    a Boot's expect() calls in turn would have."""
    at = 0
    for pattern in patterns:
        found = re.compile(pattern).search(text, at)
        assert found, f"no {pattern!r} on the console after offset {at}"
        at = found.end()


def boot_to_token(
    options: BootOptions,
    *,
    on_the_way: Callable[[Boot], None] | None = None,
    systemd_initrd: bool = True,
    token: str | None = None,
) -> Booted:
    """Boot with a new token and prove the boot reached the real root and powered off.

    on_the_way runs first with the running guest: expect what must come before the
    token, type a passphrase, plug a disk. token is for a boot that carries its own
    (a UKI's built-in command line); by default a new one goes on options.append.
    """
    if token is None:
        token = new_token()
        options = with_token(options, token)
    with boot(options) as vm:
        if on_the_way is not None:
            on_the_way(vm)
        expect_token(vm, token, options.timeout, systemd_initrd=systemd_initrd)
        return Booted(text=vm.text, seconds=vm.elapsed)
