"""Signed UKIs: the keys of `--secureboot-key/--secureboot-cert` and `--pcr-private-key`.

bookend does not sign anything itself. The sysroot's ukify signs the UKI for Secure Boot
with sbsign (sbsigntool, on the machine running bookend: ukify runs there too, see
bookend.uki), and has the sysroot's systemd-measure sign the PCR 11 values the UKI will
measure on each boot phase (its .pcrsig section, with the public key as .pcrpkey).
systemd-measure is a program of the sysroot, linked against the sysroot's libraries: it
is started through the sysroot's own dynamic loader with the sysroot's library
directories, which needs no chroot (and no root) as long as the sysroot's architecture is
this machine's.

What is checked before any build step (bookend.resolve): each key file is readable and
openssl reads it as what it should be, and a certificate and the key said to be its own
have the same public key; ukify and sbsign would otherwise fail half way through the
build, or sign with a key that does not match the certificate.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookend import arches, elf
from bookend.config.sources import Problems
from bookend.errors import BookendError, CommandError, ConfigError, ElfError
from bookend.proc import run
from bookend.sysroot import Sysroot

KEY_SETTINGS = ("secureboot_key", "secureboot_cert", "pcr_private_key", "pcr_public_key")
# Where systemd (252 and 257 alike) looks for the certificates it checks a Verity image's
# signature against in userspace, when the kernel's keyrings do not vouch for it; it reads
# only *.crt files, and skips hidden ones.
VERITY_DIR = "/etc/verity.d"
CERTIFICATE_SUFFIXES = (".crt", ".pem", ".cer")
MEASURE_PATHS = ("/usr/lib/systemd/systemd-measure", "/usr/bin/systemd-measure")
SBSIGN = "sbsign"


def absolute_keys(values: Mapping[str, Any]) -> dict[str, Path | None]:
    """The key settings as absolute paths (given relative to the current directory)."""
    return {key: None if values[key] is None else Path(os.path.abspath(values[key]))
            for key in KEY_SETTINGS}  # fmt: skip


def check_keys(values: Mapping[str, Any], origins: Mapping[str, str], problems: Problems) -> None:
    """Every given key file readable and of its kind, each certificate its key's."""
    keys = absolute_keys(values)
    public: dict[str, bytes | None] = {}
    kinds = {"secureboot_key": "private", "secureboot_cert": "cert",
             "pcr_private_key": "private", "pcr_public_key": "public"}  # fmt: skip
    for key, path in keys.items():
        if path is None:
            continue
        try:
            public[key] = public_key_of(path, kinds[key])
        except BookendError as exc:
            problems.add(origins[key], key, str(exc))
    for private, other in (("secureboot_key", "secureboot_cert"),
                           ("pcr_private_key", "pcr_public_key")):  # fmt: skip
        mine, theirs = public.get(private), public.get(other)
        if mine is not None and theirs is not None and mine != theirs:
            problems.add(
                origins[other],
                other,
                f"{keys[other]} does not belong to {private} {keys[private]} "
                "(their public keys differ)",
            )


def verity_certificate_path(file: str) -> str:
    """Where a trusted Verity certificate (verity_certificates) goes in the image:
    /etc/verity.d/NAME.crt, NAME its file's name without .crt, .pem or .cer."""
    name = os.path.basename(file)
    for suffix in CERTIFICATE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name.removesuffix(suffix)
            break
    return f"{VERITY_DIR}/{name}.crt"


def public_key_of(path: Path, kind: str) -> bytes:
    """The PEM public key of a private key, certificate or public key file (openssl)."""
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    argvs: dict[str, list[str | Path]] = {
        # -passin: a key with a passphrase is refused, not asked for on the terminal.
        "private": ["openssl", "pkey", "-in", path, "-passin", "pass:", "-pubout"],
        "public": ["openssl", "pkey", "-pubin", "-in", path, "-pubout"],
        "cert": ["openssl", "x509", "-in", path, "-noout", "-pubkey"],
    }
    argv = argvs[kind]
    what = {"private": "a PEM private key without a passphrase",
            "public": "a PEM public key", "cert": "a PEM X.509 certificate"}[kind]  # fmt: skip
    try:
        return run(argv, input_bytes=b"").stdout
    except CommandError as exc:
        if "cannot run" in str(exc):
            raise ConfigError(f"cannot check {path}: openssl is not installed") from exc
        raise ConfigError(f"{path} is not {what}") from exc


@dataclass(frozen=True)
class Measure:
    """How to start the sysroot's systemd-measure on this machine."""

    program: Path
    loader: Path
    library_path: tuple[Path, ...]

    def argv(self) -> list[str]:
        libraries = ":".join(os.fspath(p) for p in self.library_path)
        return [os.fspath(self.loader), "--library-path", libraries, os.fspath(self.program)]

    def write_wrapper(self, directory: Path) -> Path:
        """directory/systemd-measure, a script that runs this one (ukify's --tools)."""
        directory.mkdir(parents=True, exist_ok=True)
        wrapper = directory / "systemd-measure"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(self.argv())} "$@"\n')
        wrapper.chmod(0o755)
        return directory


def find_measure(root: Sysroot, first_file: Any) -> Measure:
    """The sysroot's systemd-measure and its loader, checked by starting it once."""
    program = first_file(root, MEASURE_PATHS)
    if program is None:
        raise ConfigError(
            f"--pcr-private-key: sysroot {root.root} has no systemd-measure (systemd >= 252); "
            f"looked for {', '.join(MEASURE_PATHS)}"
        )
    try:
        interpreter = elf.read_elf(program).interpreter
    except (ElfError, OSError) as exc:
        raise ConfigError(f"--pcr-private-key: cannot read {program}: {exc}") from exc
    loader = first_file(root, (interpreter,)) if interpreter else None
    if loader is None:
        raise ConfigError(
            f"--pcr-private-key: {program} has no loader {interpreter} in the sysroot"
        )
    arch = arches.sysroot_arch(root)
    multiarch = arch.multiarch if arch else ""
    candidates = (f"/usr/lib/{multiarch}", f"/usr/lib/{multiarch}/systemd", f"/lib/{multiarch}",
                  "/usr/lib64", "/usr/lib64/systemd", "/usr/lib", "/usr/lib/systemd")  # fmt: skip
    library_path = tuple(
        root.host_path(root.resolve(d).path) for d in candidates if root.resolve(d).st is not None
    )
    measure = Measure(program, loader, library_path)
    try:
        run([*measure.argv(), "--version"])
    except CommandError as exc:
        raise ConfigError(
            f"--pcr-private-key: cannot run the sysroot's systemd-measure on this machine "
            f"(a sysroot of another architecture?): {exc}"
        ) from exc
    return measure


def require_sbsign() -> None:
    """ukify signs with sbsign from this machine's PATH (as bookend.proc scrubs it)."""
    from bookend.proc import SCRUBBED_PATH

    if shutil.which(SBSIGN, path=SCRUBBED_PATH) is None:
        raise ConfigError(
            "--secureboot-key: ukify signs with sbsign, which this machine lacks "
            "(apt install sbsigntool)"
        )


def signing_argv(
    keys: Mapping[str, Path | None], tools_dir: Path | None, pcr_public: Path | None
) -> list[str]:
    """ukify's options for the given keys; pcr_public: the public key to embed."""
    argv: list[str] = []
    sb_key, sb_cert = keys["secureboot_key"], keys["secureboot_cert"]
    if sb_key is not None and sb_cert is not None:
        argv += ["--secureboot-private-key", os.fspath(sb_key)]
        argv += ["--secureboot-certificate", os.fspath(sb_cert)]
    pcr_key = keys["pcr_private_key"]
    if pcr_key is not None and pcr_public is not None and tools_dir is not None:
        argv += ["--pcr-private-key", os.fspath(pcr_key), "--pcr-public-key", os.fspath(pcr_public)]
        argv += ["--tools", os.fspath(tools_dir)]
    return argv
