"""Size and frame limits, judged from headers and container structure before any pixel is decoded."""
from __future__ import annotations

from PIL import Image

from services.common.errors import ErrorCode, PermanentError

# A GIF's image data is a chain of sub-blocks of at most 255 bytes; encoders fill them, so even a
# 100 MB GIF has ~400k. A chain of tiny blocks is only there to make a scanner slow (10M one-byte
# blocks cost Pillow's n_frames ~2 s); past this budget we stop and call the file corrupt.
GIF_BLOCK_BUDGET = 1_000_000


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise PermanentError(ErrorCode.IMAGE_CORRUPT, f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise PermanentError(
            ErrorCode.IMAGE_TOO_MANY_PIXELS,
            f"the image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )


def check_frames(image: Image.Image, max_frames: int) -> None:
    """Reject when frame `max_frames` exists (0-based), without reading further than that frame."""
    if image.format == "GIF":
        return  # counted from the bytes by check_gif_frames, before Pillow walked the file
    if image.format == "TIFF":
        # n_frames would parse every IFD of the file; seeking parses only up to the one we ask for.
        try:
            image.seek(max_frames)
        except EOFError:
            return
        finally:
            image.seek(0)
        _too_many(f"more than {max_frames}", max_frames)
    frames = getattr(image, "n_frames", 1)  # APNG, WebP, MPO: a count stored in the header
    if frames > max_frames:
        _too_many(str(frames), max_frames)


def check_gif_frames(data: bytes, max_frames: int) -> None:
    frames = count_gif_frames(data, stop_after=max_frames + 1)
    if frames > max_frames:
        _too_many(f"more than {max_frames}", max_frames)


def count_gif_frames(data: bytes, *, stop_after: int) -> int:
    """Image descriptors in a GIF, counting at most `stop_after`; stops quietly at the end or at garbage."""
    if len(data) < 13:
        return 0
    pos = 13 + _colour_table_size(data[10])
    frames, blocks = 0, 0
    while pos < len(data) and frames < stop_after:
        introducer = data[pos]
        if introducer == 0x21 and pos + 1 < len(data):  # extension: label, then sub-blocks
            pos, blocks = _skip_sub_blocks(data, pos + 2, blocks)
        elif introducer == 0x2C and pos + 10 < len(data):  # image descriptor, palette, LZW size, sub-blocks
            frames += 1
            pos += 10 + _colour_table_size(data[pos + 9]) + 1
            pos, blocks = _skip_sub_blocks(data, pos, blocks)
        else:  # trailer, truncation or garbage: the decoder will judge what is there
            break
    return frames


def _colour_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, pos: int, blocks: int) -> tuple[int, int]:
    end = len(data)
    while pos < end:
        length = data[pos]
        pos += length + 1
        if length == 0:
            return pos, blocks
        blocks += 1
        if blocks > GIF_BLOCK_BUDGET:
            raise PermanentError(ErrorCode.IMAGE_CORRUPT, "the GIF is split into implausibly many data blocks")
    return pos, blocks


def _too_many(found: str, max_frames: int) -> None:
    raise PermanentError(
        ErrorCode.IMAGE_TOO_MANY_FRAMES, f"the image has {found} frames; the limit is {max_frames}"
    )
