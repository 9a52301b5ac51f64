import pytest
from PIL import Image

from services.common.errors import ErrorCode, PermanentError
from services.common.media import sniff
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
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
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
