"""Reading a response body into memory without trusting its headers about size or encoding."""
from __future__ import annotations

import hashlib
import zlib

import aiohttp
from aiohttp import hdrs

from services.common.errors import ErrorCode, PermanentError

# We ask for `identity`, but some origins gzip anyway. Those bodies are inflated here, by hand and
# capped, because aiohttp's own decompression has no output limit (a 20 MB gzip bomb is ~20 GB).
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(max_bytes: int) -> PermanentError:
    return PermanentError(ErrorCode.SOURCE_TOO_LARGE, f"source is larger than {max_bytes} bytes")


def _inflater(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _ZLIB_WBITS:
        raise PermanentError(ErrorCode.SOURCE_HTTP_ERROR, f"origin sent Content-Encoding {encoding!r}, which we do not decode")
    return zlib.decompressobj(_ZLIB_WBITS[encoding])


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, str]:
    """The body and its sha256 (hex), refused as soon as it (or its declared length) passes `max_bytes`."""
    if response.content_length is not None and response.content_length > max_bytes:
        raise _too_large(max_bytes)
    inflater = _inflater(response.headers.get(hdrs.CONTENT_ENCODING, ""))
    pieces: list[bytes] = []  # joined once at the end: a growing bytearray reallocates (and copies) as it grows
    size = wire = 0
    digest = hashlib.sha256()
    try:
        async for chunk in response.content.iter_any():
            wire += len(chunk)
            if wire > max_bytes:
                raise _too_large(max_bytes)
            # Asking for one byte more than the room left is enough to tell "fits" from "too large".
            piece = inflater.decompress(chunk, max_bytes - size + 1) if inflater else chunk
            size += len(piece)
            if size > max_bytes:
                raise _too_large(max_bytes)
            pieces.append(piece)
            digest.update(piece)
        if inflater is not None and not inflater.eof:
            raise PermanentError(ErrorCode.SOURCE_HTTP_ERROR, "origin's compressed body ends early")
    except zlib.error:
        raise PermanentError(ErrorCode.SOURCE_HTTP_ERROR, "origin's compressed body cannot be decoded") from None
    if not size:
        raise PermanentError(ErrorCode.SOURCE_EMPTY, "origin sent an empty body")
    return b"".join(pieces), digest.hexdigest()
