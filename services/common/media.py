"""Media type from the first bytes of a payload: the only judge of what an image is (never Content-Type)."""
from __future__ import annotations

import re

from .errors import ErrorCode, PermanentError

ACCEPTED = (
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/avif", "image/heic",
    "image/heif",
)

# Signatures of raster formats we decode, checked at offset 0.
_RASTER: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "image/tiff"),
)

# Images we recognise but do not decode; naming them tells the user what to convert from.
_UNSUPPORTED: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"II\xbc", "JPEG XR"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"DDS ", "DDS"),
    (b"farbfeld", "farbfeld"),
    (b"FLIF", "FLIF"),
    (b"BPG\xfb", "BPG"),
    (b"gimp xcf", "XCF"),
    (b"%!PS-Adobe-3.0 EPSF", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
)

# ISO base media files name their kind by the major brand at offset 8 of the `ftyp` box, then compatible brands.
# AVIF stills and sequences (Pillow decodes them with libavif); only the first frame is rendered.
_AVIF_BRANDS = (b"avif", b"avis")
# HEVC-coded HEIF (pillow-heif decodes them with libheif); only the primary image is rendered.
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
# The generic HEIF brands: the codec is not named. Usually HEVC; an AVIF may also carry one as its major brand
# and list `avif` among its compatible brands.
_HEIF_BRANDS = (b"mif1", b"msf1")
# Other ISO base media brands we recognise but do not decode; the rest are video or documents.
_FTYP_BRANDS = {b"jxl ": "JPEG XL", b"crx ": "Canon CR3 raw"}

_NETPBM = re.compile(rb"P[1-7]\s+(#[^\n]*\n\s*)*\d")
_SVG_HEAD = 1024  # an SVG root element appears after at most an XML declaration, comments and a doctype


def sniff(data: bytes) -> str:
    """The accepted media type of `data`, or PermanentError saying why it is not one (looks at ≤1 KiB)."""
    if not data:
        raise PermanentError(ErrorCode.SOURCE_EMPTY, "the source is empty (0 bytes)")
    for magic, media_type in _RASTER:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        iso_media = _iso_media_type(data)
        if iso_media:
            return iso_media
    if _is_bmp(data):
        return "image/bmp"
    unsupported = _unsupported_name(data)
    if unsupported:
        raise PermanentError(ErrorCode.UNSUPPORTED_FORMAT, f"{unsupported} images are not supported")
    raise PermanentError(ErrorCode.NOT_AN_IMAGE, f"the source is not an image (starts with {data[:16]!r})")


def _iso_media_type(data: bytes) -> str | None:
    major = data[8:12]
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and any(b in _AVIF_BRANDS for b in _compatible_brands(data))):
        return "image/avif"
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major in _HEIF_BRANDS:
        return "image/heif"
    return None


def _compatible_brands(data: bytes) -> list[bytes]:
    """The brands listed after the major brand and its version, within the `ftyp` box (and the sniffed bytes)."""
    end = min(int.from_bytes(data[:4], "big"), len(data), 1024)
    return [data[at:at + 4] for at in range(16, end - 3, 4)]


def _is_bmp(data: bytes) -> bool:
    # "BM" alone also starts plain text ("BMW ..."): require the reserved zeros and a known DIB header size.
    return (
        len(data) >= 18
        and data[:2] == b"BM"
        and data[6:10] == b"\x00\x00\x00\x00"
        and int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    )


def _unsupported_name(data: bytes) -> str | None:
    for magic, name in _UNSUPPORTED:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    if _NETPBM.match(data[:64]):
        return "Netpbm"
    if _is_svg(data[:_SVG_HEAD]):
        return "SVG"
    return None


def _is_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text.startswith(b"<"):
        return False
    svg = text.find(b"<svg")
    html = min((i for i in (text.find(b"<html"), text.find(b"<!doctype html")) if i >= 0), default=-1)
    # An HTML page may embed inline SVG; it is still a page, not an image.
    return svg >= 0 and (html < 0 or svg < html)
