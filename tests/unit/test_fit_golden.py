"""Golden images for each fit and gravity: sources with known colour blocks, checked by exact size and region colour."""
import random
from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
from PIL import Image, ImageOps, ImageStat

from services.common.model import Rendition
from services.resizer.imaging import make_thumbnail
from tests.unit.samples import encode

RED, BLUE, GREY, WHITE = (255, 0, 0), (0, 0, 255), (128, 128, 128), (255, 255, 255)
LIMITS = {"max_pixels": 50_000_000, "max_frames": 10}
PNG_TOLERANCE = 3  # lossless source and output: only resampling rounding
JPEG_TOLERANCE = 12  # a JPEG source or output: block artefacts and chroma subsampling

# EXIF orientation -> the transpose that shows the stored picture upright, and the one that undoes it.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STORED = {**UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def wide(size: tuple[int, int] = (400, 200)) -> Image.Image:
    """Grey, its left quarter red and its right quarter blue."""
    w, h = size
    image = Image.new("RGB", size, GREY)
    image.paste(RED, (0, 0, w // 4, h))
    image.paste(BLUE, (w - w // 4, 0, w, h))
    return image


def tall(size: tuple[int, int] = (200, 400)) -> Image.Image:
    """Grey, its top quarter red and its bottom quarter blue."""
    w, h = size
    image = Image.new("RGB", size, GREY)
    image.paste(RED, (0, 0, w, h // 4))
    image.paste(BLUE, (0, h - h // 4, w, h))
    return image


def textured(size: tuple[int, int], patch: tuple[int, int, int, int]) -> Image.Image:
    """Flat grey with one patch of grey noise: the only detail in the picture."""
    image = Image.new("RGB", size, GREY)
    width, height = patch[2] - patch[0], patch[3] - patch[1]
    noise = Image.frombytes("L", (width, height), random.Random(7).randbytes(width * height))
    image.paste(noise.convert("RGB"), patch[:2])
    return image


def with_orientation(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels, turned as its EXIF orientation says, show `upright`."""
    stored = upright.transpose(STORED[orientation]) if orientation in STORED else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert ImageOps.exif_transpose(Image.open(BytesIO(data))).size == upright.size  # the table above is right
    return data


def render(source: Image.Image | bytes, rendition: Rendition) -> Image.Image:
    data = source if isinstance(source, bytes) else encode(source, "PNG")
    result = make_thumbnail(data, rendition, **LIMITS)
    image = Image.open(BytesIO(result.data))
    image.load()
    assert image.size == (result.width, result.height)
    return image


def mean(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    return tuple(round(v) for v in ImageStat.Stat(image.crop(box)).mean)


def spread(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    """Standard deviation of the grey levels in a region: ~0 where flat, large where the noise patch is."""
    return ImageStat.Stat(image.convert("L").crop(box)).stddev[0]


def near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = PNG_TOLERANCE) -> bool:
    return len(actual) == len(expected) and all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png(width: int, height: int, **options: Any) -> Rendition:
    return Rendition(width, height, "png", **options)


# contain


def test_contain_fits_inside_the_box_keeping_the_aspect_ratio() -> None:
    image = render(wide(), png(100, 100))
    assert image.size == (100, 50)
    assert near(mean(image, (2, 5, 22, 45)), RED)
    assert near(mean(image, (35, 5, 65, 45)), GREY)
    assert near(mean(image, (78, 5, 98, 45)), BLUE)


def test_contain_leaves_a_smaller_source_its_size() -> None:
    image = render(wide((80, 40)), png(100, 100))
    assert image.size == (80, 40)
    assert near(mean(image, (2, 2, 18, 38)), RED)


def test_contain_with_enlarge_scales_a_smaller_source_up_to_touch_the_box() -> None:
    image = render(wide((80, 40)), png(100, 100, enlarge=True))
    assert image.size == (100, 50)
    assert near(mean(image, (2, 5, 20, 45)), RED)
    assert near(mean(image, (35, 5, 65, 45)), GREY)
    assert near(mean(image, (80, 5, 98, 45)), BLUE)


# cover


def test_cover_center_fills_the_box_with_the_middle() -> None:
    image = render(wide(), png(100, 100, fit="cover"))
    assert image.size == (100, 100)
    for box in ((0, 0, 8, 100), (46, 0, 54, 100), (92, 0, 100, 100)):  # the 200 px in the middle: all grey
        assert near(mean(image, box), GREY)


@pytest.mark.parametrize(
    ("source", "gravity", "kept", "colour"),
    [
        (wide, "west", (3, 3, 45, 97), RED),
        (wide, "east", (55, 3, 97, 97), BLUE),
        (tall, "north", (3, 3, 97, 45), RED),
        (tall, "south", (3, 55, 97, 97), BLUE),
    ],
)
def test_cover_keeps_the_side_gravity_names(source: Callable[[], Image.Image], gravity: str, kept: tuple[int, int, int, int],
                                            colour: tuple[int, int, int]) -> None:
    image = render(source(), png(100, 100, fit="cover", gravity=gravity))
    assert image.size == (100, 100)
    assert near(mean(image, kept), colour)
    # The other half of the window is the grey middle of the source.
    other = (100 - kept[2], kept[1], 100 - kept[0], kept[3]) if gravity in ("west", "east") \
        else (kept[0], 100 - kept[3], kept[2], 100 - kept[1])
    assert near(mean(image, other), GREY)


@pytest.mark.parametrize(("source", "gravity"), [(tall, "east"), (tall, "west"), (wide, "north"), (wide, "south")])
def test_gravity_across_an_axis_that_does_not_overflow_changes_nothing(source: Callable[[], Image.Image], gravity: str) -> None:
    picture = source()
    assert render(picture, png(100, 100, fit="cover", gravity=gravity)).tobytes() == \
        render(picture, png(100, 100, fit="cover")).tobytes()


@pytest.mark.parametrize(
    ("size", "patch", "detailed", "flat"),
    [
        ((400, 200), (300, 0, 400, 200), (55, 5, 95, 95), (5, 5, 45, 95)),  # detail on the right
        ((400, 200), (0, 0, 100, 200), (5, 5, 45, 95), (55, 5, 95, 95)),  # on the left
        ((200, 400), (0, 300, 200, 400), (5, 55, 95, 95), (5, 5, 95, 45)),  # at the bottom
        # Every window from the top edge down to the patch holds all of it: the tie goes to the one nearest the centre.
        ((200, 400), (0, 40, 200, 120), (5, 8, 95, 38), (5, 50, 95, 95)),
    ],
)
def test_cover_smart_keeps_the_detailed_part(size: tuple[int, int], patch: tuple[int, int, int, int],
                                             detailed: tuple[int, int, int, int], flat: tuple[int, int, int, int]) -> None:
    image = render(textured(size, patch), png(100, 100, fit="cover", gravity="smart"))
    assert image.size == (100, 100)
    assert spread(image, detailed) > 20
    assert spread(image, flat) < 1


def test_cover_smart_on_a_flat_picture_keeps_the_middle() -> None:
    picture = Image.new("RGB", (400, 200), GREY)
    assert render(picture, png(100, 100, fit="cover", gravity="smart")).tobytes() == \
        render(picture, png(100, 100, fit="cover")).tobytes()


@pytest.mark.parametrize(
    ("source", "box", "expected"),
    [
        ((80, 40), (100, 100), (40, 40)),  # smaller both ways: the largest square
        ((90, 40), (100, 50), (80, 40)),  # the largest 2:1 window
        ((300, 40), (100, 100), (40, 40)),  # wider than the box but not as tall
        ((40, 300), (100, 100), (40, 40)),
        ((200, 100), (100, 100), (100, 100)),  # covers the box exactly at scale 1
    ],
)
def test_cover_without_enlarge_crops_a_small_source_unscaled(source: tuple[int, int], box: tuple[int, int],
                                                              expected: tuple[int, int]) -> None:
    image = render(wide(source), png(*box, fit="cover"))
    assert image.size == expected
    w, h = expected
    assert near(mean(image, (w // 3, h // 3, 2 * w // 3, 2 * h // 3)), GREY)  # the middle of the source (center)


def test_cover_without_enlarge_places_the_small_window_by_gravity() -> None:
    image = render(wide((80, 40)), png(100, 100, fit="cover", gravity="west"))
    assert image.size == (40, 40)
    assert mean(image, (0, 0, 20, 40)) == RED and mean(image, (20, 0, 40, 40)) == GREY  # unscaled: sharp edges


def test_cover_with_enlarge_scales_a_small_source_up_to_the_box() -> None:
    image = render(wide((80, 40)), png(100, 100, fit="cover", enlarge=True))
    assert image.size == (100, 100)
    assert near(mean(image, (10, 10, 90, 90)), GREY)


def test_cover_jpeg() -> None:
    image = render(encode(wide(), "JPEG", quality=95), Rendition(100, 100, "jpeg", fit="cover", gravity="east"))
    assert image.size == (100, 100)
    assert near(mean(image, (60, 5, 95, 95)), BLUE, JPEG_TOLERANCE)
    assert near(mean(image, (5, 5, 40, 95)), GREY, JPEG_TOLERANCE)


# pad


def test_pad_png_adds_transparent_bands() -> None:
    image = render(wide(), png(100, 100, fit="pad"))
    assert image.size == (100, 100) and image.mode == "RGBA"
    assert mean(image, (0, 0, 100, 25)) == (0, 0, 0, 0)
    assert mean(image, (0, 75, 100, 100)) == (0, 0, 0, 0)
    assert near(mean(image, (2, 30, 22, 70)), (*RED, 255))
    assert near(mean(image, (78, 30, 98, 70)), (*BLUE, 255))


def test_pad_tall_source_png_adds_side_bands() -> None:
    image = render(tall(), png(100, 100, fit="pad"))
    assert image.size == (100, 100)
    assert mean(image, (0, 0, 25, 100))[3] == 0 and mean(image, (75, 0, 100, 100))[3] == 0
    assert near(mean(image, (30, 2, 70, 22)), (*RED, 255))


def test_pad_jpeg_adds_white_bands() -> None:
    image = render(wide(), Rendition(100, 100, "jpeg", fit="pad"))
    assert image.size == (100, 100) and image.mode == "RGB"
    assert near(mean(image, (0, 0, 100, 22)), WHITE, JPEG_TOLERANCE)
    assert near(mean(image, (0, 78, 100, 100)), WHITE, JPEG_TOLERANCE)
    assert near(mean(image, (35, 30, 65, 70)), GREY, JPEG_TOLERANCE)


@pytest.mark.parametrize(
    ("rendition", "mode", "band"),
    [
        (png(100, 100, fit="pad", background="00ff00"), "RGB", (0, 255, 0)),
        (png(100, 100, fit="pad", background="00ff0080"), "RGBA", (0, 255, 0, 128)),
        (Rendition(100, 100, "jpeg", fit="pad", background="102030"), "RGB", (16, 32, 48)),
        (Rendition(100, 100, "jpeg", fit="pad", background="00000080"), "RGB", (127, 127, 127)),  # on white
    ],
    ids=["png-opaque", "png-translucent", "jpeg", "jpeg-translucent"],
)
def test_pad_bands_take_the_background(rendition: Rendition, mode: str, band: tuple[int, ...]) -> None:
    image = render(wide(), rendition)
    assert image.size == (100, 100) and image.mode == mode
    tolerance = JPEG_TOLERANCE if rendition.format == "jpeg" else PNG_TOLERANCE
    assert near(mean(image, (0, 0, 100, 20)), band, tolerance)
    assert near(mean(image, (35, 30, 65, 70))[:3], GREY, tolerance)


def test_pad_centres_a_smaller_source_unscaled() -> None:
    image = render(wide((40, 20)), png(100, 100, fit="pad"))
    assert image.size == (100, 100)
    assert image.getbbox() == (30, 40, 70, 60)  # the opaque picture; the rest is transparent


def test_pad_with_enlarge_scales_a_smaller_source_up() -> None:
    image = render(wide((40, 20)), png(100, 100, fit="pad", enlarge=True))
    assert image.getbbox() == (0, 25, 100, 75)


# EXIF orientation: fits and gravities apply to the upright picture


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("source", "gravity", "kept", "colour"),
    [
        (tall, "north", (5, 5, 95, 42), RED),
        (tall, "south", (5, 58, 95, 95), BLUE),
        (wide, "west", (5, 5, 42, 95), RED),
        (wide, "east", (58, 5, 95, 95), BLUE),
    ],
)
def test_cover_gravity_applies_to_the_upright_picture(orientation: int, source: Callable[[], Image.Image], gravity: str,
                                                      kept: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    data = with_orientation(source(), orientation)
    image = render(data, png(100, 100, fit="cover", gravity=gravity))
    assert image.size == (100, 100)
    assert near(mean(image, kept), colour, JPEG_TOLERANCE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_small_source_crop_and_smart_gravity_apply_to_the_upright_picture(orientation: int) -> None:
    small = render(with_orientation(tall((40, 80)), orientation), png(100, 100, fit="cover", gravity="north"))
    assert small.size == (40, 40)
    assert near(mean(small, (2, 2, 38, 16)), RED, JPEG_TOLERANCE)
    detailed = render(with_orientation(textured((200, 400), (0, 300, 200, 400)), orientation),
                      png(100, 100, fit="cover", gravity="smart"))
    assert spread(detailed, (5, 55, 95, 95)) > 20 and spread(detailed, (5, 5, 95, 45)) < 3


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_pad_applies_to_the_upright_picture(orientation: int) -> None:
    image = render(with_orientation(tall(), orientation), png(100, 100, fit="pad"))
    assert image.size == (100, 100)
    assert mean(image, (0, 0, 24, 100))[3] == 0  # side bands: the upright picture is tall
    assert near(mean(image, (30, 3, 70, 20))[:3], RED, JPEG_TOLERANCE)
