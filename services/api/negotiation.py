"""Which encoding of a `format: auto` rendition a client gets, from its Accept header (no I/O)."""
from __future__ import annotations

from services.common.model import AUTO, AUTO_FORMATS, TaskRendition


def accepted_types(accept: str) -> set[str]:
    """The media types an Accept header names with a q above 0 (wildcards are left out: `*/*` or `image/*` says
    nothing about whether the client decodes AVIF, so such clients get JPEG)."""
    types = set()
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        quality = next((p.partition("=")[2] for p in parameters if p.lower().startswith("q=")), "1")
        try:
            wanted = float(quality) > 0
        except ValueError:
            wanted = False
        if wanted and media_type:
            types.add(media_type.lower())
    return types


def negotiated_format(rendition: TaskRendition, accept: str) -> str:
    """The encoding to serve: the rendition's own format, or for AUTO the first of AVIF, WebP and JPEG that the
    client accepts (JPEG whatever it says: every client decodes it)."""
    asked = rendition.rendered.rendition
    if asked.format != AUTO:
        return asked.format
    accepted = accepted_types(accept)
    return next((fmt for fmt in AUTO_FORMATS if f"image/{fmt}" in accepted and fmt in rendition.keys), "jpeg")
