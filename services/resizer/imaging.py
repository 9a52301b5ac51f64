"""Pure thumbnail rendering: image bytes and renditions in, encoded thumbnails out (no I/O).

Every way an input can be bad ends as a PermanentError with a stable code; no Pillow exception or
warning escapes. Importing this module mutates no global state: Pillow's settings (MAX_IMAGE_PIXELS,
LOAD_TRUNCATED_IMAGES) stay as they are, and our own limits are checked explicitly. The first HEIC/HEIF
source a process renders registers pillow-heif's opener in Pillow's format registry, once; every other
source is opened with an explicit list of formats, so it never reaches that opener.
"""
from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from io import BytesIO

from PIL import Image, ImageCms

from services.common.errors import ErrorCode, PermanentError
from services.common.media import sniff
from services.common.model import ALPHA_FORMATS, FITS, GRAVITIES, Rendition

from .limits import check_frames, check_gif_frames, check_pixels

# thumbnail() first shrinks by an integer factor (cheap box reduce) down to reducing_gap x the target,
# then resamples with BICUBIC. After a JPEG draft the source is at most ~16x the target, and 3.0 keeps
# almost all of that for the fine filter: measured on photo-like 12 MP JPEGs it gains ~1.3 dB PSNR
# over 2.0 (vs a full-size LANCZOS reference) at the same speed. Pillow's docs call 3.0
# "indistinguishable from fair resampling in most cases".
REDUCING_GAP = 3.0
RESAMPLE = Image.Resampling.BICUBIC  # what thumbnail() uses; the other fits resize alike

PILLOW_FORMATS = {
    "image/jpeg": ("JPEG",),  # multi-picture JPEGs (MPO) open through the JPEG plugin too
    "image/png": ("PNG",),
    "image/gif": ("GIF",),
    "image/webp": ("WEBP",),
    "image/bmp": ("BMP",),
    "image/tiff": ("TIFF",),
    "image/avif": ("AVIF",),
    "image/heic": ("HEIF",),  # the format pillow-heif registers, once _register_heif_opener ran
    "image/heif": ("HEIF",),
}
HEIF_TYPES = ("image/heic", "image/heif")
ENCODERS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
Size = tuple[int, int]
Box = tuple[float, float, float, float]  # left, top, right, bottom
RGBA = tuple[int, int, int, int]
WHITE: RGBA = (255, 255, 255, 255)
TRANSPARENT: RGBA = (0, 0, 0, 0)
COLOUR = re.compile(r"[0-9a-f]{6}(?:[0-9a-f]{2})?")  # a rendition's background: rrggbb or rrggbbaa
ALPHA_MODES = ("RGBA", "LA", "RGBa", "La")

# EXIF orientation (TIFF tag 274) -> the transpose that shows the picture upright.
ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
QUARTER_TURNS = (5, 6, 7, 8)
# The transpose that undoes a quarter rotation; every other transpose undoes itself.
UNDO = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}

# Where a cropped window sits in the room left around it, per axis: 0 at the left (top), 1 at the right (bottom).
GRAVITY = {"center": (0.5, 0.5), "north": (0.5, 0.0), "south": (0.5, 1.0), "east": (1.0, 0.5), "west": (0.0, 0.5)}
# Smart gravity scores windows on a copy where the window's longer side is this many pixels, at no more than this
# many positions: ~10 us of entropy per position, whatever the size of the source.
SMART_SIDE = 48
SMART_CANDIDATES = 32

# What Pillow raises on malformed input, from its plugins and C decoders alike.
DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error,
    IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, ImageCms.PyCMSError,
    RuntimeError,  # pillow-heif, when libheif lacks the codec (a mif1 file may hold AV1) or fails to decode
)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    content_type: str


def make_thumbnails(data: bytes, renditions: Sequence[Rendition], *, max_pixels: int, max_frames: int) -> list[Thumbnail]:
    """Render every rendition, in order, from one decode of the first frame of `data`: upright, without metadata."""
    for rendition in renditions:
        _check(rendition)
    if not renditions:
        return []
    media_type = sniff(data)
    if media_type == "image/gif":
        check_gif_frames(data, max_frames)  # before Pillow walks the file at open
    if media_type in HEIF_TYPES:
        _register_heif_opener()
    with _decoding():
        image = Image.open(BytesIO(data), formats=PILLOW_FORMATS[media_type])
        check_pixels(image.size, max_pixels)
        check_frames(image, max_frames)
        pictures = render_all(image, renditions)
        return [
            Thumbnail(encode(picture, rendition), picture.width, picture.height, rendition.content_type)
            for picture, rendition in zip(pictures, renditions, strict=True)
        ]


def make_thumbnail(data: bytes, rendition: Rendition, *, max_pixels: int, max_frames: int) -> Thumbnail:
    return make_thumbnails(data, [rendition], max_pixels=max_pixels, max_frames=max_frames)[0]


def _check(rendition: Rendition) -> None:
    """The API validates renditions; one that reaches us invalid is a bad request, not a bad image."""
    if rendition.width < 1 or rendition.height < 1:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"rendition size {rendition.width}x{rendition.height}")
    for name, value, allowed in (("format", rendition.format, ENCODERS), ("fit", rendition.fit, FITS),
                                 ("gravity", rendition.gravity, GRAVITIES)):
        if value not in allowed:
            raise PermanentError(ErrorCode.INVALID_REQUEST, f"rendition {name} {value!r}")
    if rendition.background is not None and not COLOUR.fullmatch(rendition.background):
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"rendition background {rendition.background!r}")


@cache
def _register_heif_opener() -> None:
    import pillow_heif  # here, not at the top: importing this module must not touch Pillow's registry

    # Only the primary picture is rendered: no depth or auxiliary images. One decoder thread: the resizer
    # already runs a worker process per core.
    pillow_heif.register_heif_opener(decode_threads=1, depth_images=False, aux_images=False)


@contextmanager
def _decoding() -> Iterator[None]:
    # catch_warnings changes process-wide filters for its duration; that is safe because rendering
    # runs one image at a time per worker process, never in threads.
    with warnings.catch_warnings():
        # Pillow warns from open() above 89 MP; our own check_pixels is the limit that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Quirks of the input (odd EXIF, TIFF tags...) are UserWarnings; they change nothing we return.
        warnings.simplefilter("ignore", UserWarning)
        try:
            yield
        except PermanentError:
            raise
        except Image.DecompressionBombError:
            # Pillow's hard stop at 2 x MAX_IMAGE_PIXELS, raised inside open() before we can look.
            raise PermanentError(ErrorCode.IMAGE_TOO_MANY_PIXELS, "the image declares too many pixels") from None
        except MemoryError:
            raise PermanentError(ErrorCode.IMAGE_CORRUPT, "decoding the image needed too much memory") from None
        except DECODE_ERRORS as exc:
            raise PermanentError(ErrorCode.IMAGE_CORRUPT, f"cannot decode the image: {_short(exc)}") from None


def render_all(image: Image.Image, renditions: Sequence[Rendition]) -> list[Image.Image]:
    """The upright picture of each rendition from an opened (not yet decoded) image, in a mode its format takes."""
    orientation = _orientation(image)
    # JPEG: libjpeg decodes at 1/2..1/8 scale straight from the DCT, the largest scale still >= the size the
    # most demanding rendition needs; HEIF: an embedded thumbnail that large, if there is one. A no-op for
    # every other format. Must come before anything that decodes pixels.
    image.draft("RGB", _decode_size(image.size, renditions, orientation))
    source = _resizable(image)
    last = len(renditions) - 1
    return [_render(source, rendition, orientation, shared=i < last) for i, rendition in enumerate(renditions)]


def _render(source: Image.Image, rendition: Rendition, orientation: int, *, shared: bool) -> Image.Image:
    """One rendition; `shared` when later renditions still need `source` as it is."""
    box = (rendition.width, rendition.height)
    if rendition.fit == "cover":
        picture = _cover(source, box, orientation, rendition.gravity, rendition.enlarge)
    else:
        picture = _contain(source, box, orientation, rendition.enlarge, shared=shared)
    picture = _output_mode(picture, rendition.format, rendition.background)
    if rendition.fit == "pad":
        picture = _padded(picture, box, _pad_colour(rendition.background, rendition.format))
    return picture


def _contain(source: Image.Image, box: Size, orientation: int, enlarge: bool, *, shared: bool) -> Image.Image:
    """The upright picture fitted inside the box; scaled up to touch it only with `enlarge`."""
    scale = _fit_scale(_turned(source.size, orientation), box)
    if enlarge and scale > 1:
        picture = source.resize(_scaled(source.size, scale), RESAMPLE, reducing_gap=REDUCING_GAP)
    else:
        picture = source.copy() if shared else source  # thumbnail() resizes in place
        # The box applies to the upright picture; a quarter turn happens after resizing, so swap it.
        picture.thumbnail(_turned(box, orientation), reducing_gap=REDUCING_GAP)  # never enlarges; keeps >= 1 px per side
    return _upright(picture, orientation)


def _cover(source: Image.Image, box: Size, orientation: int, gravity: str, enlarge: bool) -> Image.Image:
    """The upright picture filling the box, what overflows cropped where `gravity` says.

    A source that does not cover the box on some side is scaled up only with `enlarge`; without, the result is the
    largest window of the box's aspect ratio the source holds, at the source's own resolution (smaller than the box).
    """
    size = _turned(source.size, orientation)
    scale = _cover_scale(size, box)
    if (scale > 1 and enlarge) or scale < 1:
        window = (min(size[0], box[0] / scale), min(size[1], box[1] / scale))
        x, y = _origin(source, orientation, window, gravity)
        region = _stored_box((x, y, x + window[0], y + window[1]), size, orientation)
        # The crop is part of the resize (its box), so only the window is resampled.
        return _upright(source.resize(_turned(box, orientation), RESAMPLE, box=_within(region, source.size),
                                      reducing_gap=REDUCING_GAP), orientation)
    whole = _largest_window(size, box)
    x, y = _origin(source, orientation, whole, gravity)
    left, top = round(x), round(y)
    crop = _stored_box((left, top, left + whole[0], top + whole[1]), size, orientation)
    return _upright(source.crop(crop), orientation)


def _origin(source: Image.Image, orientation: int, window: tuple[float, float], gravity: str) -> tuple[float, float]:
    """The top-left corner of the window in the upright picture."""
    size = _turned(source.size, orientation)
    across, down = _smart_gravity(source, orientation, window) if gravity == "smart" else GRAVITY[gravity]
    return across * (size[0] - window[0]), down * (size[1] - window[1])


def _smart_gravity(source: Image.Image, orientation: int, window: tuple[float, float]) -> tuple[float, float]:
    """Where along the overflowing axis the window holds the most detail: the highest entropy of its grey levels,
    scored at a few positions on a small copy (ties go to the centre)."""
    factor = min(1.0, SMART_SIDE / max(window))
    small = _upright(source.resize(_scaled(source.size, factor), Image.Resampling.BOX).convert("L"), orientation)
    width = min(small.width, max(1, round(window[0] * factor)))
    height = min(small.height, max(1, round(window[1] * factor)))
    free_x, free_y = small.width - width, small.height - height
    across = free_x >= free_y
    free = free_x if across else free_y
    if free == 0:
        return GRAVITY["center"]

    def detail(offset: int) -> float:
        x, y = (offset, free_y // 2) if across else (free_x // 2, offset)
        return small.crop((x, y, x + width, y + height)).entropy()

    offsets = [*range(0, free, -(-free // SMART_CANDIDATES)), free]
    best = max(offsets, key=lambda offset: (detail(offset), -abs(2 * offset - free)))
    return (best / free, 0.5) if across else (0.5, best / free)


def _padded(picture: Image.Image, box: Size, colour: RGBA) -> Image.Image:
    """The picture centred on a canvas of exactly the box."""
    mode = "RGBA" if colour[3] < 255 or picture.mode == "RGBA" else "RGB"
    canvas = Image.new(mode, box, colour if mode == "RGBA" else colour[:3])
    canvas.paste(picture.convert(mode), ((box[0] - picture.width) // 2, (box[1] - picture.height) // 2))
    return canvas


def _pad_colour(background: str | None, fmt: str) -> RGBA:
    if background is not None:
        colour = _rgba(background)
    else:
        colour = TRANSPARENT if fmt in ALPHA_FORMATS else WHITE
    return colour if fmt in ALPHA_FORMATS else _on_white(colour)


def encode(image: Image.Image, rendition: Rendition) -> bytes:
    image.info = {}  # savers copy ICC, transparency and comments from info: the output carries no metadata
    out = BytesIO()
    if rendition.format == "jpeg":
        # optimize (Huffman tables fitted to the image) costs ~13 us on 100x56 and saves ~15 % of bytes.
        image.save(out, "JPEG", quality=rendition.quality, optimize=True, progressive=False)
    elif rendition.format in ("webp", "avif"):
        image.save(out, ENCODERS[rendition.format], quality=rendition.quality)
    else:
        image.save(out, ENCODERS[rendition.format])
    return out.getvalue()


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(0x0112, 1)
    return value if isinstance(value, int) else 1


def _decode_size(size: Size, renditions: Sequence[Rendition], orientation: int) -> Size:
    """The smallest stored size every rendition can be rendered from at full quality."""
    upright = _turned(size, orientation)
    needed = [_scaled(upright, min(_needed_scale(upright, rendition), 1.0)) for rendition in renditions]
    return _turned((max(w for w, _ in needed), max(h for _, h in needed)), orientation)


def _needed_scale(size: Size, rendition: Rendition) -> float:
    box = (rendition.width, rendition.height)
    return _cover_scale(size, box) if rendition.fit == "cover" else _fit_scale(size, box)


def _fit_scale(size: Size, box: Size) -> float:
    return min(box[0] / size[0], box[1] / size[1])


def _cover_scale(size: Size, box: Size) -> float:
    return max(box[0] / size[0], box[1] / size[1])


def _scaled(size: Size, scale: float) -> Size:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _largest_window(size: Size, box: Size) -> Size:
    """The largest window of the box's aspect ratio inside `size`."""
    if size[0] * box[1] > size[1] * box[0]:
        return min(size[0], max(1, round(size[1] * box[0] / box[1]))), size[1]
    return size[0], min(size[1], max(1, round(size[0] * box[1] / box[0])))


def _turned(size: Size, orientation: int) -> Size:
    """A size in the stored picture as the upright picture has it, or the reverse (a quarter turn swaps both ways)."""
    return (size[1], size[0]) if orientation in QUARTER_TURNS else size


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(ORIENTATION[orientation]) if orientation in ORIENTATION else image


def _stored_box(box: Box, upright_size: Size, orientation: int) -> Box:
    """A box of the upright picture in the stored picture's coordinates (undoing the EXIF transpose)."""
    if orientation not in ORIENTATION:
        return box
    method = ORIENTATION[orientation]
    return transposed_box(UNDO.get(method, method), upright_size, box)


def transposed_box(method: Image.Transpose, size: Size, box: Box) -> Box:
    """Where `box` of an image of `size` lands in image.transpose(method)."""
    w, h = size
    x0, y0, x1, y1 = box
    match method:
        case Image.Transpose.FLIP_LEFT_RIGHT:
            return w - x1, y0, w - x0, y1
        case Image.Transpose.FLIP_TOP_BOTTOM:
            return x0, h - y1, x1, h - y0
        case Image.Transpose.ROTATE_180:
            return w - x1, h - y1, w - x0, h - y0
        case Image.Transpose.ROTATE_90:  # counter-clockwise
            return y0, w - x1, y1, w - x0
        case Image.Transpose.ROTATE_270:
            return h - y1, x0, h - y0, x1
        case Image.Transpose.TRANSPOSE:
            return y0, x0, y1, x1
        case Image.Transpose.TRANSVERSE:
            return h - y1, w - x1, h - y0, w - x0
    raise ValueError(f"unknown transpose {method}")


def _within(box: Box, size: Size) -> Box:
    """The box clamped to the image: float rounding must not push it a hair outside (resize refuses that)."""
    x0, y0, x1, y1 = box
    return max(0.0, x0), max(0.0, y0), min(float(size[0]), x1), min(float(size[1]), y1)


def _resizable(image: Image.Image) -> Image.Image:
    """Modes resampling would get wrong, converted first (these sources are never JPEG, so no draft is lost)."""
    transparent = "transparency" in image.info
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if transparent or image.mode == "PA" else "RGB")  # else NEAREST only
    if image.mode in ("L", "RGB") and transparent:
        return image.convert("RGBA")  # a tRNS colour key becomes real alpha
    if image.mode == "1":
        return image.convert("L")  # resizing 1-bit is NEAREST only
    if image.mode.startswith("I;16"):
        # Pillow cannot resample I;16 and its convert("L") clips at 255: scale 16 -> 8 bits ourselves.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return image


def _output_mode(image: Image.Image, fmt: str, background: str | None) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        image = _to_srgb(image, icc)
    elif image.mode in ("I", "F"):
        image = _to_8bit(image)
    alpha = image.mode in ALPHA_MODES
    if alpha and background is not None:
        behind = _rgba(background)
        image = _composited(image, behind)
        alpha = behind[3] < 255  # a translucent background keeps some transparency where the format has alpha
    if fmt != "jpeg":
        return image.convert("RGBA" if alpha else "RGB")
    if alpha:
        # JPEG has no alpha: composite on white, as a browser shows it on a white page.
        return _composited(image, WHITE).convert("RGB")
    return image.convert("RGB")


def _composited(image: Image.Image, colour: RGBA) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", image.size, colour), image.convert("RGBA"))


def _rgba(hex_colour: str) -> RGBA:
    channels = bytes.fromhex(hex_colour)
    return channels[0], channels[1], channels[2], channels[3] if len(channels) == 4 else 255


def _on_white(colour: RGBA) -> RGBA:
    """The opaque colour a translucent one shows on white (JPEG has no alpha)."""
    r, g, b, a = colour
    return _over_white(r, a), _over_white(g, a), _over_white(b, a), 255


def _over_white(channel: int, alpha: int) -> int:
    return round((channel * alpha + 255 * (255 - alpha)) / 255)


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Apply the embedded profile (CMYK, wide-gamut RGB); a broken profile falls back to a plain conversion."""
    out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        transform = _transform(icc, image.mode, out_mode)
        return ImageCms.applyTransform(image, transform) or image
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image.convert(out_mode)


@lru_cache(maxsize=32)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform:
    # Parsing a profile and building a transform costs milliseconds; sources share a few profiles.
    source = ImageCms.ImageCmsProfile(BytesIO(icc))
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), in_mode, out_mode)


def _to_8bit(image: Image.Image) -> Image.Image:
    """32-bit integer or float samples to L, stretching only when they exceed the 8-bit range."""
    _, high = image.getextrema()
    scale = 255 / high if isinstance(high, (int, float)) and high > 255 else 1.0
    return image.point(lambda v: v * scale).convert("L")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
