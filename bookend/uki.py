"""`bookend build --uki`: the sysroot's kernel, bookend's initrd and a command line in one
EFI executable (a unified kernel image), made by the sysroot's own ukify.

ukify is run by the interpreter running bookend, not inside the sysroot by chroot: a
chroot needs root, the sysroot's Python for this machine's architecture, and the
initrd and the output inside the sysroot (copied in or bind-mounted: writes into a
tree that may be read-only or the live system). ukify is one Python file that needs
only `pefile` besides the standard library; the stub, kernel and os-release it reads
are data, so taking them from the sysroot by path gives the sysroot's UKI.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bookend import arches
from bookend.archive.atomic import Staged, staged_file
from bookend.errors import ConfigError
from bookend.proc import run
from bookend.signing import Measure, find_measure, public_key_of, require_sbsign, signing_argv
from bookend.sysroot import Sysroot

UKIFY_PATHS = ("/usr/lib/systemd/ukify", "/usr/bin/ukify")
STUB_DIR = "/usr/lib/systemd/boot/efi"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")


def stub_paths(root: Sysroot) -> tuple[str, ...]:
    """systemd-boot's stub for the sysroot's architecture (bookend.arches); every known
    stub when its systemd says no architecture (a tree without ELF files)."""
    arch = arches.sysroot_arch(root)
    chosen = (arch,) if arch is not None else arches.ARCHES
    return tuple(f"{STUB_DIR}/{a.efi_stub}" for a in chosen if a.efi_stub)


def kernel_paths(kver: str) -> tuple[str, ...]:
    """Where distributions put the kernel image: Debian's /boot, or beside the modules."""
    return (f"/boot/vmlinuz-{kver}", f"/usr/lib/modules/{kver}/vmlinuz")


@dataclass(frozen=True)
class UkiTools:
    """The build host's paths of what makes the UKI, all from the sysroot."""

    ukify: Path
    stub: Path
    kernel: Path
    os_release: Path | None
    # The signing keys (bookend.signing.KEY_SETTINGS, absolute; None: not given) and
    # the sysroot's systemd-measure when the PCR 11 values are signed.
    keys: Mapping[str, Path | None] = field(default_factory=dict)
    measure: Measure | None = None


def find_uki_tools(
    sysroot: Path, kver: str, keys: Mapping[str, Path | None] | None = None
) -> UkiTools:
    """Everything ukify needs, or a one-line error naming the first thing missing."""
    keys = dict(keys or {})
    root = Sysroot(sysroot)
    ukify = _first_file(root, UKIFY_PATHS)
    if ukify is None:
        raise ConfigError(
            f"--uki: sysroot {sysroot} has no ukify (install systemd-ukify, systemd >= 253); "
            f"looked for {', '.join(UKIFY_PATHS)}"
        )
    stubs = stub_paths(root)
    stub = _first_file(root, stubs)
    if stub is None:
        looked = ", ".join(stubs) or "(its architecture has no systemd-boot stub)"
        raise ConfigError(
            f"--uki: sysroot {sysroot} has no EFI stub {looked} (install systemd-boot-efi)"
        )
    kernel = _first_file(root, kernel_paths(kver))
    if kernel is None:
        raise ConfigError(
            f"--uki: sysroot {sysroot} has no kernel image for {kver}; "
            f"looked for {', '.join(kernel_paths(kver))}"
        )
    if importlib.util.find_spec("pefile") is None:
        raise ConfigError(
            f"--uki: ukify needs the Python module pefile, which {sys.executable} lacks "
            "(install python3-pefile, or pip install pefile)"
        )
    if keys.get("secureboot_key") is not None:
        require_sbsign()
    measure = find_measure(root, _first_file) if keys.get("pcr_private_key") else None
    os_release = _first_file(root, OS_RELEASE_PATHS)
    return UkiTools(ukify, stub, kernel, os_release, keys, measure)


def _first_file(root: Sysroot, paths: tuple[str, ...]) -> Path | None:
    for path in paths:
        resolved = root.resolve(path)
        if resolved.st is not None and root.host_path(resolved.path).is_file():
            return root.host_path(resolved.path)
    return None


def ukify_argv(
    tools: UkiTools,
    kver: str,
    initrd: Path,
    cmdline: str | None,
    output: Path,
    scratch: Path | None = None,
) -> list[str]:
    argv = [sys.executable, str(tools.ukify), "build", "--linux", str(tools.kernel)]
    argv += ["--initrd", str(initrd), "--stub", str(tools.stub), "--uname", kver]
    # Otherwise ukify would describe the build host's OS, not the sysroot's.
    if tools.os_release is not None:
        argv += ["--os-release", f"@{tools.os_release}"]
    if cmdline is not None:
        argv += ["--cmdline", cmdline]
    return [*argv, *_signing(tools, scratch), "--output", str(output)]


def _signing(tools: UkiTools, scratch: Path | None) -> list[str]:
    """ukify's signing options; the PCR public key (derived from the private key when
    not given) and a systemd-measure wrapper (bookend.signing.Measure) go into scratch."""
    if not tools.keys:
        return []
    tools_dir = pcr_public = None
    pcr_key = tools.keys.get("pcr_private_key")
    if tools.measure is not None and pcr_key is not None and scratch is not None:
        tools_dir = tools.measure.write_wrapper(scratch / "tools")
        pcr_public = tools.keys.get("pcr_public_key")
        if pcr_public is None:
            pcr_public = scratch / "pcr-public.pem"
            pcr_public.write_bytes(public_key_of(pcr_key, "private"))
    return signing_argv(tools.keys, tools_dir, pcr_public)


@contextmanager
def staged_uki(
    tools: UkiTools,
    kver: str,
    write_initrd: Callable[[Path], None],
    cmdline: str | None,
    target: Path,
    verify: Callable[[Path], None],
    mode: int,
) -> Iterator[Staged]:
    """Build the initrd and the UKI in a private directory; the whole UKI beside target.

    The caller renames it into place (with the exitrd: bookend.build._replace_pair).
    """
    with tempfile.TemporaryDirectory(prefix="bookend-uki-") as scratch:
        initrd = Path(scratch) / "initrd.img"
        write_initrd(initrd)
        verify(initrd)  # the same check a plain initrd gets before it replaces one
        uki = Path(scratch) / "uki.efi"
        run(ukify_argv(tools, kver, initrd, cmdline, uki, Path(scratch)))

        def copy(out: BinaryIO) -> None:
            with uki.open("rb") as source:
                shutil.copyfileobj(source, out)

        with staged_file(target, copy, mode) as staged:
            yield staged
