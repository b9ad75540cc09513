"""What the guest's display shows, as a PNG file: QMP `screendump`.

The harness runs QEMU with -nographic, which only keeps QEMU from opening a window: the
machine still has its VGA card (or the one a test adds with BootOptions.devices), and
`screendump` writes what that card shows. QEMU 7.1 and later write PNG when asked;
an older QEMU writes PPM, which is turned into PNG here with the standard library, so a
test always keeps a picture any viewer opens.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from harness.qmp import Qmp, QmpError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def screendump(qmp: Qmp, path: Path) -> Path:
    """Write the guest's screen to path as PNG; return path."""
    try:
        qmp.execute("screendump", filename=str(path), format="png")
    except QmpError as error:
        if "format" not in str(error) and "png" not in str(error).lower():
            raise
        ppm = path.with_suffix(".ppm")
        qmp.execute("screendump", filename=str(ppm))
        path.write_bytes(png_from_ppm(ppm.read_bytes()))
        ppm.unlink()
    return path


def png_from_ppm(data: bytes) -> bytes:
    """A binary PPM (P6, 8 bits a sample, as QEMU writes it) as an RGB PNG."""
    fields = data.split(maxsplit=4)
    if len(fields) < 5 or fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError("not an 8-bit binary PPM (P6)")
    width, height, pixels = int(fields[1]), int(fields[2]), fields[4]
    stride = width * 3
    # Filter type 0 (none) before every row.
    raw = b"".join(b"\0" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + (_chunk(b"IEND", b""))
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
