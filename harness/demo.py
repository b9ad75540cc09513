"""Boot the cached root disk with an initrd and check the guest reports our token.

    python -m harness.demo --initrd /boot/initrd.img-$(uname -r) [--append "quiet"]
        [--exitrd DIR]

The root disk is booted by its UUID unless --append names a root= of its own.
Exits 0 only if the guest printed the token, entered its root through the
initrd, and powered off within the timeout. With --exitrd (a directory holding
exitrd.img and its .sha256, as bookend build writes them), a job in the root installs
the exitrd first, and the power-off must go through it: the demo then shows the
loader's line, the pivot and what the exitrd's systemd-shutdown did.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harness.exitrdjob import PIVOT, SHUTDOWN_LIMIT, install_exitrd_job
from harness.qemu import Boot, BootOptions, boot, installed_kernels
from harness.rootdisk import ensure_root_disk
from harness.token import expect_token, new_token, with_token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--initrd", type=Path, required=True)
    parser.add_argument("--kernel", type=Path, help="default: the newest /boot/vmlinuz-*")
    parser.add_argument("--append", default="", help="more kernel command line")
    parser.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--log", type=Path, help="also write the console to this file")
    parser.add_argument(
        "--exitrd", type=Path, help="directory with exitrd.img: install it and power off through it"
    )
    return parser.parse_args(argv)


def echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kernel = args.kernel
    if kernel is None:
        kernels = installed_kernels()
        if not kernels:
            print("demo: no kernel in /boot; pass --kernel", file=sys.stderr)
            return 2
        kernel = kernels[-1].path
    disk = ensure_root_disk()
    print(f"demo: root disk {disk.image} UUID={disk.uuid} LABEL={disk.label}", flush=True)
    token = new_token()
    # Without a root= of the caller's, boot the cached disk by its UUID.
    root = "" if "root=" in args.append else f"root=UUID={disk.uuid} rw"
    options = BootOptions(kernel=kernel, initrd=args.initrd, disks=(disk.image,),
                          append=f"{root} {args.append}".strip(), timeout=args.timeout,
                          log_path=args.log, echo=echo)  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bookend-demo-") as scratch:
        if args.exitrd is not None:
            job = install_exitrd_job(Path(scratch) / "job.img", args.exitrd)
            options = replace(options, disks=(*options.disks, job),
                              append=f"{options.append} bookend.job")  # fmt: skip
        with boot(with_token(options, token)) as vm:
            try:
                booted(vm, token, args)
            except AssertionError as error:
                print(f"\ndemo: FAILED: {error}", file=sys.stderr)
                return 1
    took = time.monotonic() - started
    cycles = len(re.findall(r"ordering cycle", vm.text, re.IGNORECASE))
    print(f"\ndemo: OK: token seen, booted through the initrd, powered off in {took:.0f} s")
    if args.exitrd is not None:
        print("demo: the shutdown through the exitrd:")
        for line in exitrd_lines(vm.text):
            print(f"demo:   {line}")
    if cycles:
        print(f"demo: warning: the console mentions {cycles} ordering cycle(s)", file=sys.stderr)
    return 0


def booted(vm: Boot, token: str, args: argparse.Namespace) -> None:
    """The token (through an initrd, not necessarily a systemd one: any image may be
    tried) and QEMU's exit; with --exitrd, the install job first and the pivot after."""
    if args.exitrd is None:
        expect_token(vm, token, args.timeout, systemd_initrd=False)
        return
    status = vm.expect(r"BOOKEND-JOB-STATUS (\d+)", timeout=args.timeout).group(1)
    assert status == "0", f"installing the exitrd failed (status {status})"
    expect_token(vm, token, args.timeout, systemd_initrd=False, exit_timeout=SHUTDOWN_LIMIT)
    assert PIVOT.search(vm.text), "systemd did not pivot into the exitrd"


def exitrd_lines(text: str) -> list[str]:
    """The console lines that show the exitrd at work: the loader, the pivot, and what
    the exitrd's own systemd-shutdown (and its hooks) said after it."""
    lines = [line.strip() for line in text.splitlines()]
    pivot = next(i for i, line in enumerate(lines) if PIVOT.search(line))
    loader = [line for line in lines[:pivot] if "bookend: exitrd" in line]
    shown = re.compile(r"shutdown\[1\]|bookend:|Power down|reboot:")
    return [*loader, lines[pivot], *[line for line in lines[pivot + 1 :] if shown.search(line)]]


if __name__ == "__main__":
    sys.exit(main())
