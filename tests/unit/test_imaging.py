import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image, ImageChops, ImageFile, ImageOps, ImageStat

from services.common.errors import ErrorCode, PermanentError
from services.common.model import Rendition
from services.resizer.imaging import Thumbnail, make_thumbnail, make_thumbnails, transposed_box
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


def many(data: bytes, renditions: list[Rendition]) -> list[Image.Image]:
    results = make_thumbnails(data, renditions, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    decoded = []
    for result, rendition in zip(results, renditions, strict=True):
        image = Image.open(BytesIO(result.data))
        image.load()
        assert image.size == (result.width, result.height) and result.content_type == rendition.content_type
        decoded.append(image)
    return decoded


def render_as_before(data: bytes, rendition: Rendition) -> bytes:
    """The contain-only renderer this module replaced, for the sources below (8-bit RGB or RGBA, no profile)."""
    image = Image.open(BytesIO(data))
    orientation = image.getexif().get(0x0112, 1)
    box = (rendition.height, rendition.width) if orientation in (5, 6, 7, 8) else (rendition.width, rendition.height)
    scale = min(box[0] / image.width, box[1] / image.height, 1.0)
    image.draft("RGB", (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    image.thumbnail(box, reducing_gap=3.0)
    image = ImageOps.exif_transpose(image)
    if rendition.format == "jpeg" and image.mode == "RGBA":
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    image = image.convert("RGBA" if image.mode == "RGBA" else "RGB")
    image.info = {}
    out = BytesIO()
    if rendition.format == "jpeg":
        image.save(out, "JPEG", quality=rendition.quality, optimize=True, progressive=False)
    else:
        image.save(out, rendition.format.upper(), **({} if rendition.format == "png" else {"quality": rendition.quality}))
    return out.getvalue()


def exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


DEFAULT_SOURCES = {
    "JPEG": lambda: encode(gradient((640, 480)), "JPEG"),
    "JPEG turned 6": lambda: exif_jpeg(gradient((640, 480)), 6),
    "JPEG mirrored 2": lambda: exif_jpeg(gradient((640, 480)), 2),
    "large JPEG": lambda: encode(gradient((3000, 2000)), "JPEG"),
    "RGBA PNG": lambda: encode(gradient((300, 500), "RGBA"), "PNG"),
}


@pytest.mark.parametrize("name", DEFAULT_SOURCES)
@pytest.mark.parametrize(
    "rendition", [Rendition(), Rendition(160, 90), Rendition(37, 300, "png"), Rendition(500, 500, "webp", 70)], ids=str
)
def test_default_renditions_render_byte_for_byte_as_before(name: str, rendition: Rendition) -> None:
    data = DEFAULT_SOURCES[name]()
    alone = make_thumbnail(data, rendition, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    assert make_thumbnails(data, [rendition], max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES) == [alone]
    assert alone.data == render_as_before(data, rendition)


def test_several_renditions_come_from_one_open_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real_open = Image.open

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        opened.append(args)
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", counting_open)
    renditions = [Rendition(100, 100), Rendition(60, 60, "png", fit="cover"), Rendition(80, 80, "webp", fit="pad")]
    results = make_thumbnails(encode(gradient((400, 200)), "JPEG"), renditions, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    assert len(opened) == 1
    assert [(r.width, r.height, r.content_type) for r in results] == [
        (100, 50, "image/jpeg"), (60, 60, "image/png"), (80, 80, "image/webp")
    ]


@pytest.mark.parametrize(
    ("renditions", "copies"),
    [([Rendition()], 0), ([Rendition(), Rendition(50, 50), Rendition(70, 70)], 2),
     ([Rendition(fit="cover"), Rendition(fit="pad"), Rendition()], 1), ([Rendition(), Rendition(fit="cover")], 1),
     ([Rendition(), Rendition(fit="cover"), Rendition(enlarge=True, width=900, height=900)], 1)],
    ids=["one", "three-contain", "cover-pad-contain", "contain-cover", "contain-cover-enlarge"],
)
def test_the_decoded_source_is_copied_only_for_an_in_place_resize_others_still_need(
    renditions: list[Rendition], copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(gradient((400, 200)), "PNG")  # PNG: no draft, so the decoded source stays 400x200
    copied = []
    real_copy = Image.Image.copy

    def counting_copy(self: Image.Image) -> Image.Image:
        copied.append(self.size)
        return real_copy(self)

    monkeypatch.setattr(Image.Image, "copy", counting_copy)
    many(data, renditions)
    assert copied.count((400, 200)) == copies


def test_the_largest_rendition_decides_the_jpeg_draft() -> None:
    data = encode(gradient((1600, 1600)), "JPEG")
    small, large = Rendition(50, 50), Rendition(400, 400)
    together = make_thumbnails(data, [small, large], max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    assert together[1] == make_thumbnail(data, large, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    assert (together[0].width, together[0].height) == (50, 50)


def test_failures_of_the_source_fail_all_renditions() -> None:
    with pytest.raises(PermanentError) as caught:
        make_thumbnails(png_declaring(50_000, 50_000), [Rendition(), Rendition(fit="cover")], max_pixels=MAX_PIXELS,
                        max_frames=MAX_FRAMES)
    assert caught.value.code is ErrorCode.IMAGE_TOO_MANY_PIXELS


def test_no_renditions_render_nothing() -> None:
    assert make_thumbnails(b"", [], max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES) == []


@pytest.mark.parametrize(
    "rendition",
    [Rendition(0, 10), Rendition(format="auto"), Rendition(fit="stretch"), Rendition(gravity="face"),
     Rendition(background="red"), Rendition(background="FFFFFF"), Rendition(background="fffff")],
    ids=str,
)
def test_invalid_renditions_are_invalid_requests(rendition: Rendition) -> None:
    with pytest.raises(PermanentError) as caught:
        make_thumbnails(encode(gradient((40, 20)), "PNG"), [Rendition(), rendition], max_pixels=MAX_PIXELS,
                        max_frames=MAX_FRAMES)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_enlarge_scales_a_small_source_up_to_touch_the_box() -> None:
    _, decoded = thumb(encode(gradient((40, 20)), "PNG"), Rendition(100, 100, enlarge=True))
    assert decoded.size == (100, 50)
    assert close(decoded.getpixel((5, 25)), (255, 0, 0), 12)


def test_enlarge_changes_nothing_for_a_source_larger_than_the_box() -> None:
    data = encode(gradient((400, 200)), "JPEG")
    assert thumb(data, Rendition(enlarge=True))[0].data == thumb(data)[0].data


def test_enlarge_fits_the_upright_picture() -> None:
    _, decoded = thumb(exif_jpeg(gradient((40, 20)), 6), Rendition(100, 40, enlarge=True))
    assert decoded.size == (20, 40)
    assert close(colour(decoded.crop((0, 0, 20, 8))), (255, 0, 0), 16)  # the red band turned to the top


def half_transparent() -> bytes:
    source = Image.new("RGBA", (200, 100), (255, 0, 0, 0))
    source.paste((0, 0, 255, 255), (100, 0, 200, 100))
    return encode(source, "PNG")


@pytest.mark.parametrize(
    ("fmt", "background", "mode", "behind"),
    [("jpeg", "00ff00", "RGB", (0, 255, 0)), ("png", "00ff00", "RGB", (0, 255, 0)),
     ("webp", "00ff00", "RGB", (0, 255, 0)), ("png", "00ff0080", "RGBA", (0, 255, 0, 128)),
     ("jpeg", "00ff0080", "RGB", (127, 255, 127))],
)
def test_background_is_what_transparent_parts_show(fmt: str, background: str, mode: str, behind: tuple[int, ...]) -> None:
    _, decoded = thumb(half_transparent(), Rendition(100, 100, fmt, 90, background=background))
    assert decoded.mode == mode and decoded.size == (100, 50)
    assert close(decoded.getpixel((20, 25)), behind)
    assert close(decoded.getpixel((80, 25))[:3], (0, 0, 255))


def test_background_leaves_opaque_sources_as_they_are() -> None:
    data = encode(gradient((200, 100)), "PNG")
    assert thumb(data, Rendition(format="png", background="00ff00"))[0].data == thumb(data, Rendition(format="png"))[0].data


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_transposed_box_follows_the_pixels(method: Image.Transpose) -> None:
    image = Image.frombytes("RGB", (7, 5), bytes(range(105)))
    box = (1, 2, 4, 5)
    moved = tuple(int(v) for v in transposed_box(method, image.size, box))
    assert image.transpose(method).crop(moved).tobytes() == image.crop(box).transpose(method).tobytes()


def heic(image: Image.Image, **params: object) -> bytes:
    """HEIC bytes from libheif directly: encoding must not register the opener the renderer registers."""
    out = BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=90, **params)
    return out.getvalue()


def test_heic_is_decoded() -> None:
    source = Image.new("RGB", (200, 100), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 100, 100))
    result, decoded = thumb(heic(source), Rendition(100, 100, "png"))
    assert result.content_type == "image/png" and decoded.size == (100, 50)
    assert close(decoded.getpixel((20, 25)), (255, 0, 0), 12)
    assert close(decoded.getpixel((80, 25)), (0, 0, 255), 12)


def test_heic_keeps_transparency() -> None:
    _, decoded = thumb(heic(Image.open(BytesIO(half_transparent())).convert("RGBA")), Rendition(100, 100, "png"))
    assert decoded.mode == "RGBA" and decoded.getpixel((20, 25))[3] == 0
    assert close(decoded.getpixel((80, 25)), (0, 0, 255, 255), 12)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_heic_orientation_is_applied_once(orientation: int) -> None:
    # libheif turns the picture upright as it decodes (the EXIF orientation is stored as irot/imir and reported
    # as 1): turning it again by EXIF would be wrong.
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = heic(gradient((200, 100)), exif=exif.tobytes())
    _, decoded = thumb(data, Rendition(100, 100, "png"))
    upright = ImageOps.exif_transpose(Image.open(BytesIO(exif_jpeg(gradient((200, 100)), orientation))))
    assert decoded.size == ((100, 50) if orientation == 3 else (50, 100))
    assert max(ImageStat.Stat(ImageChops.difference(decoded, upright.resize(decoded.size))).mean) < 8


def test_heic_over_the_pixel_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pillow_heif.HeifImageFile, "load", _must_not_run("a pixel was decoded"))
    error = fails(ErrorCode.IMAGE_TOO_MANY_PIXELS, heic(gradient((200, 100))), max_pixels=19_999)
    assert "200x100" in error.message


def test_heic_with_several_images_is_limited_and_renders_the_primary_one() -> None:
    frames = [Image.new("RGB", (64, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    heif = pillow_heif.HeifFile()
    for frame in frames:
        heif.add_from_pillow(frame)
    out = BytesIO()
    heif.save(out, quality=90)
    data = out.getvalue()
    fails(ErrorCode.IMAGE_TOO_MANY_FRAMES, data, max_frames=2)
    _, decoded = thumb(data, max_frames=3)
    assert close(colour(decoded), (255, 0, 0), 12)


def test_av1_in_a_generic_heif_file_is_corrupt_not_a_crash() -> None:
    # A mif1 file holding AV1 without naming `avif` among its brands: libheif has no AV1 decoder here.
    data = bytearray(encode(gradient((64, 32)), "AVIF"))
    data[8:12] = b"mif1"
    data[16:20] = b"mif1"  # was `avif`
    fails(ErrorCode.IMAGE_CORRUPT, bytes(data))


@pytest.mark.parametrize("cut", [40, 200, -10])
def test_truncated_heic_is_corrupt(cut: int) -> None:
    fails(ErrorCode.IMAGE_CORRUPT, heic(gradient((200, 100)))[:cut])


def test_importing_the_renderer_registers_no_heif_opener() -> None:
    code = (
        "from PIL import Image\n"
        "import services.resizer.imaging\n"
        "assert 'HEIF' not in Image.OPEN, 'registered at import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[2])


def test_cover_and_pad_render_exactly_the_box() -> None:
    data = encode(gradient((400, 200)), "JPEG")
    box = Rendition(120, 90)
    covered, padded = many(data, [replace(box, fit="cover"), replace(box, fit="pad")])
    assert covered.size == padded.size == (120, 90)
