"""The token types a LUKS2 header names, read from the header itself.

A LUKS2 device starts with a binary header (magic, version 2, the header's size), then,
from byte 4096 up to that size, the JSON metadata `cryptsetup luksDump
--dump-json-metadata` prints. Its "tokens" object says how the volume may be unlocked
besides a passphrase: systemd-cryptenroll writes "systemd-tpm2", "systemd-fido2" and
"systemd-pkcs11" tokens. Read directly so hostonly detection needs neither cryptsetup
nor its JSON option (cryptsetup 2.4 and later).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAGIC = b"LUKS\xba\xbe"
BINARY_HEADER_SIZE = 4096
# The largest header cryptsetup writes (LUKS2 allows up to 4 MiB of JSON).
MAX_HEADER_SIZE = 4 * 2**20


def token_types(device: Path) -> tuple[str, ...]:
    """The types of the tokens in device's LUKS2 header, in token order; () when the
    device has no LUKS2 header or cannot be read."""
    try:
        with device.open("rb") as f:
            binary = f.read(BINARY_HEADER_SIZE)
            if len(binary) < 16 or not binary.startswith(MAGIC):
                return ()
            version, header_size = struct.unpack(">HQ", binary[6:16])
            if version != 2 or not BINARY_HEADER_SIZE < header_size <= MAX_HEADER_SIZE:
                return ()
            area = f.read(header_size - BINARY_HEADER_SIZE)
    except OSError:
        return ()
    return tokens_in_json(area)


def tokens_in_json(area: bytes) -> tuple[str, ...]:
    """The token types of a LUKS2 JSON area (NUL-padded)."""
    try:
        metadata = json.loads(area.split(b"\0", 1)[0])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ()
    tokens = metadata.get("tokens") if isinstance(metadata, dict) else None
    if not isinstance(tokens, dict):
        return ()
    ordered = sorted(tokens.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
    return tuple(
        token["type"]
        for _, token in ordered
        if isinstance(token, dict) and isinstance(token.get("type"), str)
    )
