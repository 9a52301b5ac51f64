"""Deterministic photo-like test images (Pillow only, no downloads) for the resize benchmarks.

Pictures are smooth gradients and blurred shapes with grain on top: flat synthetic images compress
far better than photos and decode faster, which would flatter every number measured on them.
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

FULLHD = (1920, 1080)
TWELVE_MP = (4000, 3000)


def photo(size: tuple[int, int], rng: random.Random, grain: float = 6.0) -> Image.Image:
    """An RGB picture with photo-like statistics: soft shapes, smooth colour ramps and sensor noise."""
    small = (max(1, size[0] // 8), max(1, size[1] // 8))
    # Three differently rotated ramps as channels give smooth, varied colour across the frame.
    ramps = [
        Image.linear_gradient("L").rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR).resize(small)
        for _ in range(3)
    ]
    base = Image.merge("RGB", ramps)
    draw = ImageDraw.Draw(base)
    for _ in range(40):
        x, y = rng.randrange(small[0]), rng.randrange(small[1])
        r = rng.randrange(2, max(3, min(small) // 3))
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=colour)
    # Blur at low resolution, then upscale: soft edges like a lens, at a fraction of the cost.
    base = base.filter(ImageFilter.GaussianBlur(2)).resize(size, Image.Resampling.BICUBIC)
    # Some sharp detail at full resolution, so the image is not all low frequencies.
    draw = ImageDraw.Draw(base)
    for _ in range(60):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.line((x, y, x + rng.randrange(-200, 200), y + rng.randrange(-200, 200)),
                  fill=tuple(rng.randrange(256) for _ in range(3)), width=rng.randrange(1, 4))
    # Grain comes from our seeded generator (Image.effect_noise cannot be seeded), so bytes repeat per seed.
    noise = _grain(size, rng, grain)
    return ImageChops.add(base, Image.merge("RGB", (noise, noise.transpose(Image.Transpose.ROTATE_180), noise)), 1.0, -128)


def _grain(size: tuple[int, int], rng: random.Random, sigma: float) -> Image.Image:
    """Deterministic Gaussian-like grain: a seeded random byte field, blurred a little and spread around 128."""
    raw = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
    # Uniform bytes blurred over a 3x3 window approach a normal distribution; rescale to the wanted sigma.
    smooth = raw.filter(ImageFilter.BoxBlur(1))
    spread = sigma / 24.6  # std of a 3x3 mean of uniform 0..255 is ~24.6
    return smooth.point(lambda v: int(128 + (v - 127.5) * spread))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes())


def _png_alpha(rng: random.Random) -> bytes:
    image = photo((1200, 800), rng).convert("RGBA")
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse((100, 50, 1100, 750), fill=255)
    image.putalpha(mask.filter(ImageFilter.GaussianBlur(20)))
    return _encode(image, "PNG")


KINDS: dict[str, Callable[[random.Random], bytes]] = {
    "fullhd": lambda rng: _encode(photo(FULLHD, rng), "JPEG", quality=90),
    "12mp": lambda rng: _encode(photo(TWELVE_MP, rng), "JPEG", quality=90),
    "png-alpha": _png_alpha,
    "progressive": lambda rng: _encode(photo(FULLHD, rng), "JPEG", quality=90, progressive=True),
    "cmyk": lambda rng: _encode(photo(FULLHD, rng).convert("CMYK"), "JPEG", quality=90),
    "exif-rotated": lambda rng: _with_orientation(photo(FULLHD, rng), rng.choice((3, 5, 6, 7, 8))),
}
SUFFIX = {"png-alpha": "png"}


def build_corpus(out_dir: Path, *, count: int, kind: str, seed: int = 0) -> list[Path]:
    """Write `count` images of `kind` into out_dir; the same seed always gives the same bytes."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = random.Random(f"{seed}:{kind}:{index}")
        path = out_dir / f"{kind}-{seed}-{index}.{SUFFIX.get(kind, 'jpg')}"
        path.write_bytes(KINDS[kind](rng))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", choices=sorted(KINDS), action="append", help="repeatable; default: all kinds")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for kind in args.kind or list(KINDS):
        for path in build_corpus(args.out_dir, count=args.count, kind=kind, seed=args.seed):
            print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
