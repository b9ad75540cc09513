"""A signed UKI from the Debian 13 tree: sbverify accepts its signature with the test's
certificate and refuses it with another; its .pcrsig holds PCR 11 signatures that the
embedded .pcrpkey verifies.

The tree is harness/ukisysroot.py's (trixie's ukify, stub, kernel and systemd-measure).
The UKI's initrd has systemd-pcrphase-initrd.service, enabled (feature pcrphase), which
extends PCR 11 by the phases the signatures are made for.
The Secure Boot firmware's verdict on such UKIs is tests/vm/test_uki.py's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bookend.inspect.image import scan_image
from bookend.resolve import newest_kernel
from harness.images import QEMU_VIRTIO_EXT4, bookend
from harness.secureboot import make_key_pair, missing_tools
from harness.ukisysroot import ensure_trixie_sysroot

# systemd-measure signs these boot phases by default: PCR 11 as the initrd starts, as it
# ends, after sysinit in the root, and when the root is ready.
PHASES = 4


def pe_sections(image: Path) -> dict[str, bytes]:
    pefile = pytest.importorskip("pefile")
    pe = pefile.PE(str(image), fast_load=True)
    return {s.Name.rstrip(b"\0").decode(): s.get_data()[: s.Misc_VirtualSize] for s in pe.sections}


def test_signed_uki_verifies_and_carries_pcr11_signatures(tmp_path: Path) -> None:
    if missing_tools():
        pytest.skip(f"missing {', '.join(missing_tools())} (scripts/setup)")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    sysroot = ensure_trixie_sysroot()
    kver = newest_kernel(sysroot)
    assert kver is not None
    db = make_key_pair(tmp_path, "db")
    other = make_key_pair(tmp_path, "other")
    uki = tmp_path / "uki.efi"
    result = bookend("build", "--sysroot", str(sysroot), "--kver", kver, "--uki",
                     "--cmdline", "console=ttyS0", "-o", str(uki), "--no-exitrd",
                     "--secureboot-key", str(db.key), "--secureboot-cert", str(db.cert),
                     "--pcr-private-key", str(other.key), *QEMU_VIRTIO_EXT4,
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr

    def sbverify(cert: Path) -> int:
        return subprocess.run(["sbverify", "--cert", cert, uki], capture_output=True).returncode

    assert sbverify(db.cert) == 0
    assert sbverify(other.cert) != 0

    sections = pe_sections(uki)
    private = serialization.load_pem_private_key(other.key.read_bytes(), password=None)
    public = private.public_key()
    assert serialization.load_pem_public_key(sections[".pcrpkey"]).public_numbers() == (
        public.public_numbers()
    )  # derived from --pcr-private-key, as no --pcr-public-key was given
    # systemd's fingerprint of an RSA key: SHA-256 of its PKCS#1 DER (i2d_PublicKey).
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    pcrsig = json.loads(sections[".pcrsig"].rstrip(b"\0"))
    assert "sha256" in pcrsig
    for bank, entries in pcrsig.items():
        assert len(entries) == PHASES
        assert len({entry["pol"] for entry in entries}) == PHASES  # one policy per phase
        for entry in entries:
            assert entry["pcrs"] == [11]
            assert entry["pkfp"] == hashlib.sha256(der).hexdigest()
            verify_policy_signature(public, bank, entry)

    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(sections[".initrd"])
    paths = {entry.path for entry in scan_image(initrd).entries}
    unit = "usr/lib/systemd/system/systemd-pcrphase-initrd.service"
    assert {unit, "usr/lib/systemd/systemd-pcrextend"} <= paths
    assert "usr/lib/systemd/system/initrd.target.wants/systemd-pcrphase-initrd.service" in paths


def verify_policy_signature(public: object, bank: str, entry: dict[str, object]) -> None:
    """The signature is RSA PKCS#1 v1.5 over the policy digest, hashed with the bank's
    algorithm (as the TPM checks it for TPM2_PolicyAuthorize); raises when it is not."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    assert isinstance(public, rsa.RSAPublicKey)
    assert isinstance(entry["sig"], str) and isinstance(entry["pol"], str)
    algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(),
                 "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[bank]  # fmt: skip
    signature = base64.b64decode(entry["sig"])
    public.verify(signature, bytes.fromhex(entry["pol"]), padding.PKCS1v15(), algorithm)
