"""Just enough of PNG to look at a browser's screenshot: size and pixels (8-bit RGB/RGBA)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type -> bytes per pixel at 8 bits per sample


def chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    at = len(SIGNATURE)
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack_from(">I", data, at + 8 + length)
        assert zlib.crc32(kind + body) == crc, f"bad CRC in the {kind!r} chunk"
        yield kind, body
        at += 12 + length


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of pixels, each pixel its RGB bytes)."""
    assert data.startswith(SIGNATURE), "not a PNG file"
    found = list(chunks(data))
    assert found[0][0] == b"IHDR" and found[-1][0] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", found[0][1])
    assert depth == 8 and colour in CHANNELS and interlace == 0, "an unexpected PNG flavour"
    raw = zlib.decompress(b"".join(body for kind, body in found if kind == b"IDAT"))
    step = CHANNELS[colour]
    stride = width * step
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        row = unfilter(line[0], bytearray(line[1:]), previous, step)
        rows.append(b"".join(bytes(row[x : x + 3]) for x in range(0, stride, step)))
        previous = row
    return width, height, rows


def unfilter(kind: int, row: bytearray, previous: bytearray, step: int) -> bytearray:
    """Undo one row's filter (PNG specification, section 9)."""
    for i in range(len(row)):
        left = row[i - step] if i >= step else 0
        up = previous[i]
        corner = previous[i - step] if i >= step else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 2:
            row[i] = (row[i] + up) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            row[i] = (row[i] + paeth(left, up, corner)) & 0xFF
    return row


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
