"""Extension images as discoverable disk images (DDIs): a squashfs root partition with
its Verity hash partition and, when signed, a signature partition, in a GPT.

This is what systemd-sysext accepts from systemd-stub's /.extra/sysext (only a signed
Verity image there, bookend.features.signed_extensions), made with the host's tools and
no root: mksquashfs, veritysetup (the hash tree, computed on files, no loop device),
openssl (a detached PKCS#7 signature of the root hash as lowercase hex text, with no
attributes and no certificates, as systemd-repart makes it), and the GPT written by the
host's systemd-repart (harness/usrdisk.py write_gpt). The partition types and the
signature partition's JSON ({"rootHash", "signature"}) are those of the UAPI
Discoverable Partitions Specification; the root and hash partitions' UUIDs are the root
hash's first and last 128 bits, as systemd-repart sets them.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

from harness.secureboot import KeyPair
from harness.treecopy import squashfs_of
from harness.usrdisk import MIB, Part, partition_uuids, write_gpt

DATA_MIN = 64 * 1024  # at least 16 data blocks: a hash tree with one level
BLOCK = 4096  # Verity's (and squashfs') block size; the signature is NUL-padded to it


def verity_extension(image: Path, tree: Path, signer: KeyPair | None) -> str:
    """A DDI at image of tree (as root's files), Verity protected, its root hash signed
    by signer (none: no signature partition); returns the root hash."""
    work = image.with_suffix(".parts")
    work.mkdir(parents=True, exist_ok=True)
    data, hashes = work / "data.squashfs", work / "hash.img"
    squashfs_of(tree, data)
    with data.open("r+b") as file:
        file.truncate(max(DATA_MIN, _aligned(data.stat().st_size)))
    out = subprocess.run(["veritysetup", "format", data, hashes],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    found = re.search(r"^Root hash:\s*([0-9a-f]{64})$", out, re.MULTILINE)
    assert found, out
    root_hash = found.group(1)
    data_uuid, hash_uuid = partition_uuids(root_hash)
    parts = [
        Part("root", "root-x86-64", data, _mib(data), data_uuid),
        Part("root-verity", "root-x86-64-verity", hashes, _mib(hashes), hash_uuid),
    ]
    if signer is not None:
        signature = work / "signature.json"
        blob = _signature_json(root_hash, signer, work)
        signature.write_bytes(blob.ljust(_aligned(len(blob)), b"\0"))
        parts.append(Part("root-verity-sig", "root-x86-64-verity-sig", signature, 1))
    # Each partition and the two partition tables: a MiB each is plenty.
    write_gpt(image, parts, sum(part.mib for part in parts) + 2)
    return root_hash


def _aligned(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _mib(path: Path) -> int:
    return -(-path.stat().st_size // MIB)


def _signature_json(root_hash: str, signer: KeyPair, work: Path) -> bytes:
    text, signature = work / "roothash.txt", work / "roothash.p7s"
    text.write_text(root_hash)
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-nocerts",
                    "-in", text, "-inkey", signer.key, "-signer", signer.cert,
                    "-outform", "der", "-out", signature],
                   check=True, capture_output=True)  # fmt: skip
    encoded = base64.b64encode(signature.read_bytes()).decode()
    return json.dumps({"rootHash": root_hash, "signature": encoded}).encode() + b"\n"
