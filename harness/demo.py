"""Boot the cached root disk with an initrd and check the guest reports our token.

    python -m harness.demo --initrd /boot/initrd.img-$(uname -r) [--append "quiet"]

The root disk is booted by its UUID unless --append names a root= of its own.
Exits 0 only if the guest printed the token, entered its root through the
initrd, and powered off within the timeout.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from harness.qemu import BootOptions, boot, installed_kernels
from harness.rootdisk import ensure_root_disk
from harness.token import expect_token, new_token, with_token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--initrd", type=Path, required=True)
    parser.add_argument("--kernel", type=Path, help="default: the newest /boot/vmlinuz-*")
    parser.add_argument("--append", default="", help="more kernel command line")
    parser.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--log", type=Path, help="also write the console to this file")
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
    with boot(with_token(options, token)) as vm:
        try:
            # Through an initrd, though not necessarily a systemd one: any image may be tried.
            expect_token(vm, token, args.timeout, systemd_initrd=False)
        except AssertionError as error:
            print(f"\ndemo: FAILED: {error}", file=sys.stderr)
            return 1
    took = time.monotonic() - started
    cycles = len(re.findall(r"ordering cycle", vm.text, re.IGNORECASE))
    print(f"\ndemo: OK: token seen, booted through the initrd, powered off in {took:.0f} s")
    if cycles:
        print(f"demo: warning: the console mentions {cycles} ordering cycle(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
