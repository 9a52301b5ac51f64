"""Pure thumbnail rendering: image bytes and a rendition in, an encoded thumbnail out (no I/O).

Every way an input can be bad ends as a PermanentError with a stable code; no Pillow exception or
warning escapes. Import mutates no global state: Pillow's settings (MAX_IMAGE_PIXELS,
LOAD_TRUNCATED_IMAGES) stay as they are, and our own limits are checked explicitly.
"""
from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO

from PIL import Image, ImageCms

from services.common.errors import ErrorCode, PermanentError
from services.common.media import sniff
from services.common.model import Rendition

from .limits import check_frames, check_gif_frames, check_pixels

# thumbnail() first shrinks by an integer factor (cheap box reduce) down to reducing_gap x the target,
# then resamples with BICUBIC. After a JPEG draft the source is at most ~16x the target, and 3.0 keeps
# almost all of that for the fine filter: measured on photo-like 12 MP JPEGs it gains ~1.3 dB PSNR
# over 2.0 (vs a full-size LANCZOS reference) at the same speed. Pillow's docs call 3.0
# "indistinguishable from fair resampling in most cases".
REDUCING_GAP = 3.0

PILLOW_FORMATS = {
    "image/jpeg": ("JPEG",),  # multi-picture JPEGs (MPO) open through the JPEG plugin too
    "image/png": ("PNG",),
    "image/gif": ("GIF",),
    "image/webp": ("WEBP",),
    "image/bmp": ("BMP",),
    "image/tiff": ("TIFF",),
    "image/avif": ("AVIF",),
}
ENCODERS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
WHITE = (255, 255, 255, 255)
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

# What Pillow raises on malformed input, from its plugins and C decoders alike.
DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error,
    IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, ImageCms.PyCMSError,
)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    content_type: str


def make_thumbnail(data: bytes, rendition: Rendition, *, max_pixels: int, max_frames: int) -> Thumbnail:
    """Render the first frame of `data` to fit within the rendition's box, upright, without metadata."""
    if rendition.width < 1 or rendition.height < 1:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"rendition size {rendition.width}x{rendition.height}")
    media_type = sniff(data)
    if media_type == "image/gif":
        check_gif_frames(data, max_frames)  # before Pillow walks the file at open
    with _decoding():
        image = Image.open(BytesIO(data), formats=PILLOW_FORMATS[media_type])
        check_pixels(image.size, max_pixels)
        check_frames(image, max_frames)
        picture = render(image, rendition)
        encoded = encode(picture, rendition)
    return Thumbnail(encoded, picture.width, picture.height, rendition.content_type)


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


def render(image: Image.Image, rendition: Rendition) -> Image.Image:
    """The upright thumbnail of an opened (not yet decoded) image, in a mode the output format takes."""
    orientation = _orientation(image)
    # The box applies to the upright picture; a quarter turn happens after resizing, so swap it.
    box = (rendition.height, rendition.width) if orientation in QUARTER_TURNS else (rendition.width, rendition.height)
    # JPEG: libjpeg decodes at 1/2..1/8 scale straight from the DCT, the largest scale still >= the
    # final size. A no-op for every other format. Must come before anything that decodes pixels.
    image.draft("RGB", _fitted(image.size, box))
    image = _resizable(image)
    image.thumbnail(box, reducing_gap=REDUCING_GAP)  # never enlarges; keeps >= 1 px per side
    if orientation in ORIENTATION:
        image = image.transpose(ORIENTATION[orientation])
    return _output_mode(image, rendition.format)


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


def _fitted(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


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


def _output_mode(image: Image.Image, fmt: str) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        image = _to_srgb(image, icc)
    elif image.mode in ("I", "F"):
        image = _to_8bit(image)
    alpha = image.mode in ALPHA_MODES
    if fmt != "jpeg":
        return image.convert("RGBA" if alpha else "RGB")
    if alpha:
        # JPEG has no alpha: composite on white, as a browser shows it on a white page.
        return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


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
