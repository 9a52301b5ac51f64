"""Small hostile and ordinary images built in memory for the imaging tests."""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import Any

from PIL import Image

D50 = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A picture whose left and right halves differ, so orientation mistakes show up."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1]))  # red band on the left edge
    return image.convert(mode)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096)  # far too little data: decoding would need to allocate first
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny JPEG with its SOF0 header patched to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_frames(count: int) -> bytes:
    """A GIF of `count` 1x1 frames written directly (Pillow would take seconds to save thousands)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02" + b"\x02\x44\x01" + b"\x00"
    return head + frame * count + b"\x3b"


def gif_fragmented(blocks: int) -> bytes:
    """One frame whose data is split into `blocks` one-byte sub-blocks: slow to walk, cheap to send."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return head + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02" + b"\x01\x00" * blocks + b"\x00\x3b"


def cmyk_profile() -> bytes:
    """A minimal ICC v2 CMYK printer profile that prints cyan ink as red (a naive conversion gives cyan)."""
    def lab(lightness: int, a: int, b: int) -> bytes:
        return bytes((round(lightness * 255 / 100), a + 128, b + 128))

    def corner(c: int, k: int) -> bytes:
        return lab(0, 0, 0) if k else lab(54, 80, 67) if c else lab(100, 0, 0)

    clut = b"".join(corner(i >> 3 & 1, i & 1) for i in range(16))  # 2 grid points per ink, C slowest, K fastest
    identity = bytes(range(256))
    matrix = b"".join(struct.pack(">i", 0x10000 if i in (0, 4, 8) else 0) for i in range(9))
    a2b0 = b"mft1" + bytes(4) + bytes((4, 3, 2, 0)) + matrix + identity * 4 + clut + identity * 3
    tags = [(b"A2B0", a2b0), (b"wtpt", b"XYZ " + bytes(4) + D50)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = (
        struct.pack(">I", offset + len(body)) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
        + bytes(12) + b"acsp" + bytes(24) + bytes(4) + D50 + bytes(48)
    )
    return header + table + body


def png_rgb16(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A 48-bit RGB PNG of one colour (Pillow cannot write 16 bits per channel itself)."""
    header = struct.pack(">IIBBBBB", size[0], size[1], 16, 2, 0, 0, 0)
    row = b"\x00" + struct.pack(">3H", *colour) * size[0]
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(row * size[1]))
        + png_chunk(b"IEND", b"")
    )
