import warnings
from collections.abc import Callable
from io import BytesIO

import pytest
from PIL import Image, ImageChops, ImageFile, ImageOps, ImageStat

from services.common.errors import ErrorCode, PermanentError
from services.common.model import Rendition
from services.resizer.imaging import Thumbnail, make_thumbnail
from tests.unit.samples import (
    cmyk_profile,
    encode,
    gif_fragmented,
    gif_frames,
    gradient,
    jpeg_declaring,
    png_declaring,
    png_rgb16,
)

MAX_PIXELS = 50_000_000
MAX_FRAMES = 1000
JPEG_100 = Rendition()


def thumb(
    data: bytes, rendition: Rendition = JPEG_100, *, max_pixels: int = MAX_PIXELS, max_frames: int = MAX_FRAMES
) -> tuple[Thumbnail, Image.Image]:
    result = make_thumbnail(data, rendition, max_pixels=max_pixels, max_frames=max_frames)
    decoded = Image.open(BytesIO(result.data))
    decoded.load()
    assert decoded.size == (result.width, result.height)
    assert Image.MIME[decoded.format] == result.content_type == rendition.content_type
    return result, decoded


def fails(code: ErrorCode, data: bytes, *, max_pixels: int = MAX_PIXELS, max_frames: int = MAX_FRAMES) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        thumb(data, max_pixels=max_pixels, max_frames=max_frames)
    assert caught.value.code is code, caught.value
    return caught.value


def colour(image: Image.Image) -> tuple[int, ...]:
    """Mean colour of the middle of an image (edges are blurred by resampling)."""
    w, h = image.size
    return tuple(round(v) for v in ImageStat.Stat(image.crop((w // 3, h // 3, 2 * w // 3, 2 * h // 3))).mean)


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 8) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (200, 100), 1)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    return encode(image, "PNG", transparency=1)


SOURCES: dict[str, Callable[[], bytes]] = {
    "RGB JPEG": lambda: encode(gradient((200, 100)), "JPEG"),
    "progressive JPEG": lambda: encode(gradient((200, 100)), "JPEG", progressive=True),
    "L JPEG": lambda: encode(gradient((200, 100), "L"), "JPEG"),
    "CMYK JPEG": lambda: encode(gradient((200, 100), "CMYK"), "JPEG"),
    "CMYK JPEG with ICC": lambda: encode(Image.new("CMYK", (200, 100), (255, 0, 0, 0)), "JPEG", icc_profile=cmyk_profile()),
    "CMYK TIFF": lambda: encode(gradient((200, 100), "CMYK"), "TIFF"),
    "YCbCr TIFF": lambda: encode(gradient((200, 100), "YCbCr"), "TIFF"),
    "RGBA PNG": lambda: encode(gradient((200, 100), "RGBA"), "PNG"),
    "LA PNG": lambda: encode(gradient((200, 100), "LA"), "PNG"),
    "P PNG with transparency": _palette_with_transparency,
    "P GIF": lambda: encode(gradient((200, 100), "P"), "GIF"),
    "1-bit PNG": lambda: encode(gradient((200, 100), "1"), "PNG"),
    "I;16 PNG": lambda: encode(Image.new("I;16", (200, 100), 40000), "PNG"),
    "48-bit PNG": lambda: png_rgb16((200, 100), (65535, 0, 32768)),
    "RGBA WebP": lambda: encode(gradient((200, 100), "RGBA"), "WEBP"),
    "BMP": lambda: encode(gradient((200, 100)), "BMP"),
    "I TIFF": lambda: encode(Image.new("I", (200, 100), 1000), "TIFF"),
    "F TIFF": lambda: encode(Image.new("F", (200, 100), 100.0), "TIFF"),
}


@pytest.mark.parametrize("name", SOURCES)
def test_every_mode_becomes_an_rgb_jpeg_within_the_box(name: str) -> None:
    _, decoded = thumb(SOURCES[name]())
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (100, 50)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CMYK JPEG with ICC", (253, 7, 10)),  # the profile prints cyan as red: it was applied
        ("I;16 PNG", (156, 156, 156)),  # 40000 / 256, not clipped to 255
        ("48-bit PNG", (255, 0, 128)),
        ("P PNG with transparency", (255, 255, 255)),  # transparent palette entry on white
        ("I TIFF", (255, 255, 255)),
        ("F TIFF", (100, 100, 100)),
    ],
)
def test_colours_survive_mode_conversion(name: str, expected: tuple[int, int, int]) -> None:
    _, decoded = thumb(SOURCES[name]())
    assert close(colour(decoded), expected), colour(decoded)


def test_cmyk_without_a_profile_is_converted_plainly() -> None:
    _, decoded = thumb(encode(Image.new("CMYK", (200, 100), (255, 0, 0, 0)), "JPEG"))
    assert close(colour(decoded), (0, 255, 255))


def test_a_broken_profile_falls_back_to_a_plain_conversion() -> None:
    data = encode(Image.new("CMYK", (200, 100), (255, 0, 0, 0)), "JPEG", icc_profile=b"not a profile" * 20)
    _, decoded = thumb(data)
    assert close(colour(decoded), (0, 255, 255))


def test_alpha_is_composited_on_white_for_jpeg() -> None:
    source = Image.new("RGBA", (200, 100), (255, 0, 0, 0))
    source.paste((0, 0, 255, 255), (100, 0, 200, 100))
    _, decoded = thumb(encode(source, "PNG"))
    assert close(decoded.getpixel((20, 25)), (255, 255, 255))
    assert close(decoded.getpixel((80, 25)), (0, 0, 255))


@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
def test_png_webp_and_avif_output_keep_transparency(fmt: str) -> None:
    source = Image.new("RGBA", (200, 100), (255, 0, 0, 0))
    source.paste((0, 0, 255, 255), (100, 0, 200, 100))
    result, decoded = thumb(encode(source, "PNG"), Rendition(100, 100, fmt, 90))
    assert result.content_type == f"image/{fmt}"
    assert decoded.mode == "RGBA" and decoded.size == (100, 50)
    assert decoded.getpixel((20, 25))[3] == 0
    assert close(decoded.getpixel((80, 25)), (0, 0, 255, 255))


@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
def test_opaque_sources_give_rgb_png_webp_and_avif(fmt: str) -> None:
    _, decoded = thumb(encode(gradient((200, 100), "CMYK"), "JPEG"), Rendition(100, 100, fmt, 90))
    assert decoded.mode == "RGB" and decoded.size == (100, 50)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(gradient((200, 100)), "JPEG", exif=exif.tobytes())
    _, decoded = thumb(data)
    assert decoded.size == ((100, 50) if orientation < 5 else (50, 100))
    upright = ImageOps.exif_transpose(Image.open(BytesIO(data))).convert("RGB").resize(decoded.size)
    # A wrong turn or flip moves the red band (a quarter of the picture): the mean difference jumps past 40.
    assert max(ImageStat.Stat(ImageChops.difference(decoded, upright)).mean) < 6


def test_quarter_turns_fit_a_non_square_box() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    _, decoded = thumb(encode(gradient((200, 100)), "JPEG", exif=exif.tobytes()), Rendition(100, 40))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(("size", "expected"), [((1, 30000), (1, 100)), ((30000, 1), (100, 1))])
def test_extreme_aspect_ratios_keep_at_least_one_pixel(size: tuple[int, int], expected: tuple[int, int]) -> None:
    _, decoded = thumb(encode(Image.new("RGB", size, (0, 128, 0)), "PNG"))
    assert decoded.size == expected


def test_never_upscales() -> None:
    _, decoded = thumb(encode(gradient((40, 20)), "PNG"))
    assert decoded.size == (40, 20)


def test_large_jpeg_keeps_its_aspect_ratio() -> None:
    _, decoded = thumb(encode(gradient((4000, 3000)), "JPEG"), Rendition(160, 160))
    assert decoded.size == (160, 120)


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif.get_ifd(0x8825)[2] = (59.0, 20.0, 0.0)  # GPS latitude
    source = encode(gradient((200, 100)), "JPEG", exif=exif.tobytes(), comment=b"secret", icc_profile=b"x" * 200)
    for fmt in ("jpeg", "png", "webp"):
        _, decoded = thumb(source, Rendition(100, 100, fmt, 80))
        assert not decoded.getexif()
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(decoded.info), decoded.info


def test_quality_is_honoured() -> None:
    source = encode(gradient((400, 200)), "JPEG")
    low, _ = thumb(source, Rendition(200, 200, "jpeg", 20))
    high, _ = thumb(source, Rendition(200, 200, "jpeg", 95))
    assert len(low.data) < len(high.data)


@pytest.mark.parametrize(
    "data",
    [png_declaring(50_000, 50_000), jpeg_declaring(60_000, 60_000), png_declaring(787_402, 787_402),
     png_declaring(10_000, 10_000)],
    ids=["png-50k", "jpeg-60k", "png-787k", "png-100mp-between-limits"],
)
def test_decompression_bombs_fail_fast_without_warnings(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fast means refused from the header: not one pixel decoded (a deterministic check, unlike a stopwatch).
    monkeypatch.setattr(Image.Image, "load", _must_not_run("a pixel was decoded"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would surface as this exception
        fails(ErrorCode.IMAGE_TOO_MANY_PIXELS, data)


def test_pixel_limit_is_checked_before_decoding() -> None:
    error = fails(ErrorCode.IMAGE_TOO_MANY_PIXELS, encode(gradient((200, 100)), "PNG"), max_pixels=19_999)
    assert "200x100" in error.message


def _must_not_run(what: str) -> Callable[..., None]:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(what)

    return refuse


def test_gif_with_thousands_of_frames_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    data = gif_frames(50_000)
    # Fast means refused by our own walk over the blocks, before Pillow opens the file and walks its frames.
    monkeypatch.setattr(Image, "open", _must_not_run("Pillow opened the file"))
    fails(ErrorCode.IMAGE_TOO_MANY_FRAMES, data, max_frames=1000)


def test_gif_at_the_frame_limit_renders() -> None:
    _, decoded = thumb(gif_frames(3000), max_frames=3000)
    assert decoded.size == (1, 1)


def test_gif_split_into_tiny_blocks_is_refused_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "open", _must_not_run("Pillow opened the file"))
    fails(ErrorCode.IMAGE_CORRUPT, gif_fragmented(3_000_000))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF", "AVIF"])
def test_animations_are_limited_and_render_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (200, 100), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    fails(ErrorCode.IMAGE_TOO_MANY_FRAMES, data, max_frames=2)
    _, decoded = thumb(data, max_frames=3)
    assert close(colour(decoded), (255, 0, 0), 12)


@pytest.mark.parametrize(
    "data",
    [
        encode(gradient((400, 200)), "JPEG")[:2000],
        encode(gradient((400, 200)), "PNG")[:300],
        encode(gradient((400, 200)), "WEBP")[:100],
        encode(gradient((400, 200)), "GIF")[:400],
        encode(gradient((400, 200)), "TIFF")[:1000],
        png_declaring(0, 100),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        b"\xff\xd8\xff\xe0" + b"garbage" * 20,
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"BM" + b"\x00" * 8 + b"\x36\x00\x00\x00\x28\x00\x00\x00" + b"\xff" * 40,
    ],
    ids=["jpeg-truncated", "png-truncated", "webp-truncated", "gif-truncated", "tiff-truncated", "png-zero-width",
         "png-no-chunks", "jpeg-garbage", "gif-header-only", "webp-empty", "bmp-garbage"],
)
def test_broken_files_are_corrupt(data: bytes) -> None:
    fails(ErrorCode.IMAGE_CORRUPT, data)


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", ErrorCode.SOURCE_EMPTY), (b"<!doctype html><html></html>", ErrorCode.NOT_AN_IMAGE),
     (b"<svg xmlns='http://www.w3.org/2000/svg'/>", ErrorCode.UNSUPPORTED_FORMAT)],
)
def test_non_images_get_the_sniffed_code(data: bytes, code: ErrorCode) -> None:
    fails(code, data)


def test_pillow_globals_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    thumb(SOURCES["RGB JPEG"]())
    with pytest.raises(PermanentError):
        thumb(png_declaring(50_000, 50_000))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before
