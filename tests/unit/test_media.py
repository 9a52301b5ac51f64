from io import BytesIO

import pillow_heif
import pytest
from PIL import Image

from services.common.errors import ErrorCode, PermanentError
from services.common.media import ACCEPTED, sniff
from tests.unit.samples import encode, gradient


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_accepted_formats_are_sniffed_from_their_bytes(fmt: str, media_type: str) -> None:
    assert sniff(encode(gradient((16, 8)), fmt)) == media_type


def test_bigtiff_and_big_endian_tiff() -> None:
    assert sniff(b"MM\x00*\x00\x00\x00\x08") == "image/tiff"
    assert sniff(b"II+\x00\x08\x00\x00\x00") == "image/tiff"


def test_empty_source() -> None:
    with pytest.raises(PermanentError) as caught:
        sniff(b"")
    assert caught.value.code is ErrorCode.SOURCE_EMPTY


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b'<?xml version="1.0"?>\n<!-- logo -->\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\xef\xbb\xbf  <svg width='10' height='10'><script>alert(1)</script></svg>", "SVG"),
        (b"\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl ", "JPEG XL"),
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", "Canon CR3 raw"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00", "ICO"),
        (b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00", "PSD"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x14ftypjp2 ", "JPEG 2000"),
        (b"\xff\x0a\xfa\x7f", "JPEG XL"),
        (b"P6\n# made by hand\n4 4\n255\n", "Netpbm"),
    ],
)
def test_recognised_but_unsupported_images_name_their_format(data: bytes, name: str) -> None:
    with pytest.raises(PermanentError) as caught:
        sniff(data)
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert name in caught.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><body><svg></svg><img src=x></body></html>",
        b"  <html><head><title>404</title></head></html>",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        b'{"error": "not found"}',
        b"PK\x03\x04\x14\x00\x00\x00",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
        b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2mp41",
        b"BMW 3 series brochure",
        b"plain text",
        b"\xff",
    ],
)
def test_everything_else_is_not_an_image(data: bytes) -> None:
    with pytest.raises(PermanentError) as caught:
        sniff(data)
    assert caught.value.code is ErrorCode.NOT_AN_IMAGE


def test_only_the_first_bytes_matter() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"<svg>" * 1000) == "image/png"
    assert sniff(encode(Image.new("RGB", (4, 4)), "JPEG") + b"<html>") == "image/jpeg"


@pytest.mark.parametrize("brand", [b"avif", b"avis"])
def test_avif_stills_and_sequences_are_decoded(brand: bytes) -> None:
    assert sniff(b"\x00\x00\x00\x1cftyp" + brand + b"\x00\x00\x00\x00avifmif1") == "image/avif"


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO base media file: its `ftyp` box, then the start of the next box."""
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x01\x00meta"


@pytest.mark.parametrize("brand", [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"])
def test_heic_brands_are_heic(brand: bytes) -> None:
    assert sniff(ftyp(brand, b"mif1", brand)) == "image/heic"


@pytest.mark.parametrize("brand", [b"mif1", b"msf1"])
def test_generic_heif_brands_are_heif(brand: bytes) -> None:
    assert sniff(ftyp(brand, b"mif1", b"heic", b"miaf")) == "image/heif"
    assert sniff(ftyp(brand)) == "image/heif"


@pytest.mark.parametrize("brand", [b"mif1", b"msf1"])
def test_a_generic_heif_brand_naming_avif_compatibility_is_avif(brand: bytes) -> None:
    # libavif (Pillow's AVIF plugin) decodes these; libheif here has no AV1 decoder.
    assert sniff(ftyp(brand, b"mif1", b"avif", b"miaf")) == "image/avif"


def test_compatible_brands_are_read_only_inside_the_ftyp_box() -> None:
    # `avif` in the next box is not a compatible brand.
    assert sniff(ftyp(b"mif1", b"miaf") + b"avif") == "image/heif"


def test_a_heic_encoded_by_libheif_is_heic() -> None:
    out = BytesIO()
    pillow_heif.from_pillow(gradient((16, 8))).save(out)
    assert sniff(out.getvalue()) == "image/heic"


def test_avif_encoded_by_pillow_is_still_avif() -> None:
    assert sniff(encode(gradient((16, 8)), "AVIF")) == "image/avif"


def test_heic_and_heif_are_accepted() -> None:
    assert {"image/heic", "image/heif", "image/avif"} <= set(ACCEPTED)
