"""Secure Boot for the tests: test keys, OVMF variables with them enrolled, and ESP images.

The keys are made by openssl for each test (a platform key, a key exchange key and a
db key, each self-signed), and enrolled by virt-firmware's virt-fw-vars into a copy of
Debian's OVMF_VARS_4M.fd with Secure Boot switched on; OVMF_CODE_4M.secboot.fd (the
build with SMM, which keeps the variables out of the guest's reach) then refuses any EFI
program that no db key signed. An ESP is a FAT image made by mkfs.vfat and filled with
mtools, with no mount (and no root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bookend.boottest.qemu import OVMF_SECURE_CODE as SECURE_CODE

OVMF_DIR = Path("/usr/share/OVMF")
BLANK_VARS = OVMF_DIR / "OVMF_VARS_4M.fd"
# The GUID that owns the test's keys in the signature lists (any GUID will do).
OWNER = "a2f3c0de-b00c-4e1d-9c7e-5ec0b007ab1e"
ESP_MIB = 64
TOOLS = ("mkfs.vfat", "mmd", "mcopy", "sbsign", "sbverify")


@dataclass(frozen=True)
class KeyPair:
    key: Path
    cert: Path


def missing_tools() -> list[str]:
    """What these tests need and this machine lacks (scripts/setup installs them)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if virt_fw_vars() is None:
        missing.append("virt-fw-vars (pip install virt-firmware)")
    missing += [str(path) for path in (SECURE_CODE, BLANK_VARS) if not path.is_file()]
    return missing


def virt_fw_vars() -> Path | None:
    """virt-fw-vars beside this interpreter (pip installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "virt-fw-vars"
    if beside.is_file():
        return beside
    found = shutil.which("virt-fw-vars")
    return Path(found) if found else None


def make_key_pair(directory: Path, name: str) -> KeyPair:
    """A 2048-bit RSA key and its self-signed certificate, as sbsign and OVMF take them."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.key", directory / f"{name}.crt")
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", "3650", "-subj", f"/CN=bookend test {name}/",
         "-keyout", pair.key, "-out", pair.cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return pair


def enrolled_vars(directory: Path, db: KeyPair) -> Path:
    """OVMF variables with a fresh PK and KEK and db's certificate enrolled, Secure Boot on."""
    pk = make_key_pair(directory, "PK")
    kek = make_key_pair(directory, "KEK")
    tool = virt_fw_vars()
    assert tool is not None
    out = directory / "OVMF_VARS.secure.fd"
    subprocess.run(
        [tool, "--input", BLANK_VARS, "--output", out,
         "--set-pk", OWNER, pk.cert, "--add-kek", OWNER, kek.cert,
         "--add-db", OWNER, db.cert, "--secure-boot"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def make_esp(image: Path, efi_program: Path, extra: Mapping[str, bytes] | None = None) -> Path:
    """A FAT ESP image holding efi_program as EFI/BOOT/BOOTX64.EFI (the removable path),
    and extra's files (ESP path, such as EFI/BOOT/BOOTX64.EFI.extra.d/a.cred -> data)."""
    image.unlink(missing_ok=True)
    size_kib = ESP_MIB * 1024
    subprocess.run(["mkfs.vfat", "-C", "-n", "ESP", image, str(size_kib)],
                   check=True, capture_output=True)  # fmt: skip
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    made: set[PurePosixPath] = set()
    with tempfile.TemporaryDirectory(prefix="bookend-esp-") as scratch:
        files = {"EFI/BOOT/BOOTX64.EFI": efi_program}
        for index, (path, data) in enumerate((extra or {}).items()):
            files[path] = Path(scratch) / str(index)
            files[path].write_bytes(data)
        for path, source in files.items():
            target = PurePosixPath(path)
            for directory in reversed(target.parents[:-1]):
                if directory not in made:
                    subprocess.run(["mmd", "-i", image, f"::/{directory}"],
                                   check=True, capture_output=True, env=env)  # fmt: skip
                    made.add(directory)
            subprocess.run(["mcopy", "-i", image, source, f"::/{target}"],
                           check=True, capture_output=True, env=env)  # fmt: skip
    return image
