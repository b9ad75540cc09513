"""Extension images as discoverable disk images (DDIs): a squashfs root partition with
its Verity hash partition and, when signed, a signature partition, in a GPT.

This is what systemd-sysext accepts from systemd-stub's /.extra/sysext (only a signed
Verity image there, bookend.features.signed_extensions), made with the host's tools and
no root: mksquashfs, veritysetup (the hash tree, computed on files, no loop device),
openssl (a detached PKCS#7 signature of the root hash as lowercase hex text, with no
attributes and no certificates, as systemd-repart makes it), and a GPT written here.
The partition types and the signature partition's JSON ({"rootHash", "signature"}) are
those of the UAPI Discoverable Partitions Specification; the root and hash partitions'
UUIDs are the root hash's first and last 128 bits, as systemd-repart sets them.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

from harness.secureboot import KeyPair

SECTOR = 512
ALIGN = 4096  # partitions start and end on Verity's (and squashfs') block size
DATA_MIN = 64 * 1024  # at least 16 data blocks: a hash tree with one level
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR
# x86-64's root, root Verity and root Verity signature partition types (UAPI.2).
ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
VERITY_X86_64 = uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")
SIGNATURE_X86_64 = uuid.UUID("41092b05-9fc8-4523-994f-2def0408b176")


def verity_extension(image: Path, tree: Path, signer: KeyPair | None) -> str:
    """A DDI at image of tree (as root's files), Verity protected, its root hash signed
    by signer (none: no signature partition); returns the root hash."""
    work = image.with_suffix(".parts")
    work.mkdir(parents=True, exist_ok=True)
    data, hashes = work / "data.squashfs", work / "hash.img"
    subprocess.run(["mksquashfs", tree, data, "-all-root", "-noappend", "-quiet"],
                   check=True, capture_output=True)  # fmt: skip
    with data.open("r+b") as file:
        file.truncate(max(DATA_MIN, _aligned(data.stat().st_size)))
    out = subprocess.run(["veritysetup", "format", data, hashes],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    found = re.search(r"^Root hash:\s*([0-9a-f]{64})$", out, re.MULTILINE)
    assert found, out
    root_hash = found.group(1)
    digest = bytes.fromhex(root_hash)
    parts = [
        (ROOT_X86_64, uuid.UUID(bytes=digest[:16]), "root", data.read_bytes()),
        (VERITY_X86_64, uuid.UUID(bytes=digest[16:]), "root-verity", hashes.read_bytes()),
    ]
    if signer is not None:
        blob = _signature_json(root_hash, signer, work)
        parts.append((SIGNATURE_X86_64, uuid.uuid4(), "root-verity-sig", blob))
    write_gpt(image, parts)
    return root_hash


def _signature_json(root_hash: str, signer: KeyPair, work: Path) -> bytes:
    text, signature = work / "roothash.txt", work / "roothash.p7s"
    text.write_text(root_hash)
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-nocerts",
                    "-in", text, "-inkey", signer.key, "-signer", signer.cert,
                    "-outform", "der", "-out", signature],
                   check=True, capture_output=True)  # fmt: skip
    encoded = base64.b64encode(signature.read_bytes()).decode()
    return json.dumps({"rootHash": root_hash, "signature": encoded}).encode() + b"\n"


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def write_gpt(image: Path, parts: list[tuple[uuid.UUID, uuid.UUID, str, bytes]]) -> None:
    """A GPT disk image holding parts (type, partition UUID, name, content) in order,
    each zero-padded to ALIGN, with the protective MBR and the backup table."""
    first = _aligned((2 + ENTRY_SECTORS) * SECTOR) // SECTOR
    entries, body, lba = b"", b"", first
    for kind, unique, name, content in parts:
        padded = content.ljust(_aligned(len(content)), b"\0")
        last = lba + len(padded) // SECTOR - 1
        label = name.encode("utf-16-le").ljust(72, b"\0")
        entries += kind.bytes_le + unique.bytes_le + struct.pack("<QQQ", lba, last, 0) + label
        body += padded
        lba = last + 1
    entries = entries.ljust(ENTRIES * ENTRY_SIZE, b"\0")
    last_usable = lba - 1
    total = lba + ENTRY_SECTORS + 1  # the backup entries, then the backup header
    disk = uuid.uuid4()
    primary = _header(1, total - 1, first, last_usable, disk, 2, entries)
    backup = _header(total - 1, 1, first, last_usable, disk, total - 1 - ENTRY_SECTORS, entries)
    with image.open("wb") as file:
        file.write(_protective_mbr(total))
        file.write(primary.ljust(SECTOR, b"\0"))
        file.write(entries)
        file.write(b"\0" * (first * SECTOR - file.tell()))
        file.write(body)
        file.write(entries)
        file.write(backup.ljust(SECTOR, b"\0"))


def _header(
    current: int, other: int, first: int, last: int, disk: uuid.UUID, table: int, entries: bytes
) -> bytes:
    def pack(crc: int) -> bytes:
        return struct.pack(
            "<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, crc, 0, current, other,
            first, last, disk.bytes_le, table, ENTRIES, ENTRY_SIZE, zlib.crc32(entries),
        )  # fmt: skip

    return pack(zlib.crc32(pack(0)))


def _protective_mbr(total: int) -> bytes:
    entry = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                        min(total - 1, 0xFFFFFFFF))  # fmt: skip
    return (b"\0" * 446 + entry).ljust(510, b"\0") + b"\x55\xaa"
