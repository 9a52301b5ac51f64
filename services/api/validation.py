"""Parsing and validating API input: every malformed request maps to a 4xx with a stable code."""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

from services.common.model import AUTO, FITS, FORMATS, GRAVITIES, MAX_RENDITIONS, Rendition
from services.common.urls import has_web_scheme

MAX_BODY_BYTES = 16 * 1024
MAX_URL_LENGTH = 2048
MAX_EDGE = 1024


class ApiError(Exception):
    """An expected client error: HTTP status, stable code, human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def parse_thumbnail_request(content_type: str, body: bytes) -> tuple[str, tuple[Rendition, ...], str | None]:
    """(source URL, renditions, callback URL or None) of a POST /thumbnail body."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the request body as application/json")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "INVALID_JSON", f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(422, "INVALID_REQUEST", "request body must be a JSON object")
    source_url = _web_url(document.get("source_image_url"), "source_image_url")
    return source_url, _renditions(document), _optional_url(document, "callback_url")


# What ECMA-262 regular expressions (those of the OpenAPI document) call whitespace, beyond ASCII.
_NOT_IN_URLS = frozenset("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                         "\u2028\u2029\u202f\u205f\u3000\ufeff")
# Control bytes and spaces, which URL parsers (WHATWG) drop around a URL: a trailing newline from a shell
# script must keep working, as it did with the system this one replaces.
_AROUND_URLS = "".join(map(chr, range(0x21)))


def _web_url(given: Any, name: str) -> str:
    if given is None:
        raise ApiError(422, "INVALID_REQUEST", f"{name} is required")
    if not isinstance(given, str):
        raise ApiError(422, "INVALID_REQUEST", f"{name} must be a string")
    if len(given) > MAX_URL_LENGTH:  # as sent: the limit the OpenAPI document states
        raise ApiError(422, "INVALID_REQUEST", f"{name} is longer than {MAX_URL_LENGTH} characters")
    url = given.strip(_AROUND_URLS)
    if not url:
        raise ApiError(422, "INVALID_REQUEST", f"{name} must not be empty")
    if any(c in _NOT_IN_URLS or c < "\x21" or c == "\x7f" for c in url):
        # A URL carries spaces as %20; raw blanks and control bytes are a classic way to smuggle a second
        # host past a parser, and the OpenAPI pattern (ECMA-262 \s) refuses exactly these.
        raise ApiError(422, "INVALID_REQUEST", f"{name} must not contain spaces or control characters")
    if not has_web_scheme(url):
        raise ApiError(422, "INVALID_REQUEST", f"{name} must be an http or https URL")
    if not url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]:
        raise ApiError(422, "INVALID_REQUEST", f"{name} has no host")
    return url


def _optional_url(document: dict[str, Any], name: str) -> str | None:
    if name not in document:
        return None
    if not isinstance(document[name], str):  # null too: left out is how a client says "none"
        raise ApiError(422, "INVALID_REQUEST", f"{name} must be a string")
    return _web_url(document[name], name)


RENDITION_FIELDS = ("width", "height", "format", "quality", "fit", "gravity", "background", "enlarge")
_COLOUR = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


def _renditions(document: dict[str, Any]) -> tuple[Rendition, ...]:
    """The request's renditions: the top-level fields describe one, or `renditions` lists 1 to 8."""
    if "renditions" not in document:
        return (_rendition(document, ""),)
    given = sorted(name for name in RENDITION_FIELDS if name in document)
    if given:
        raise ApiError(422, "CONFLICTING_FIELDS",
                       f"give either renditions or the top-level {', '.join(given)}, not both")
    listed = document["renditions"]
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_RENDITIONS:
        raise ApiError(422, "INVALID_REQUEST", f"renditions must be a list of 1 to {MAX_RENDITIONS} rendition objects")
    if not all(isinstance(item, dict) for item in listed):
        raise ApiError(422, "INVALID_REQUEST", "each entry of renditions must be a JSON object")
    return tuple(_rendition(item, f"renditions[{i}].") for i, item in enumerate(listed))


def _rendition(document: dict[str, Any], where: str) -> Rendition:
    default = Rendition()
    width = _edge(document, "width", default.width, where)
    height = _edge(document, "height", default.height, where)
    fmt = _choice(document, "format", default.format, (*FORMATS, AUTO), where)
    quality = document.get("quality", default.quality)
    if type(quality) is not int or not 1 <= quality <= 95:
        raise ApiError(422, "INVALID_REQUEST", f"{where}quality must be an integer from 1 to 95")
    fit = _choice(document, "fit", default.fit, FITS, where)
    gravity = _choice(document, "gravity", default.gravity, GRAVITIES, where)
    if gravity != default.gravity and fit != "cover":
        raise ApiError(422, "INVALID_REQUEST", f"{where}gravity applies only with fit cover (the others crop nothing)")
    enlarge = document.get("enlarge", default.enlarge)
    if type(enlarge) is not bool:
        raise ApiError(422, "INVALID_REQUEST", f"{where}enlarge must be true or false")
    return Rendition(width, height, fmt, quality, fit, gravity, _background(document, where), enlarge)


def _choice(document: dict[str, Any], name: str, default: str, allowed: tuple[str, ...], where: str) -> str:
    value = document.get(name, default)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ApiError(422, "INVALID_REQUEST", f"{where}{name} must be one of {', '.join(allowed)}")
    return value.lower()


def _background(document: dict[str, Any], where: str) -> str | None:
    """A hex colour, #rrggbb or #rrggbbaa, kept as lowercase digits without an opaque alpha (one key per colour)."""
    value = document.get("background")
    if value is None and "background" not in document:
        return None
    match = _COLOUR.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(422, "INVALID_REQUEST", f"{where}background must be a hex colour, #rrggbb or #rrggbbaa")
    digits = match.group(1).lower()
    return digits[:6] if digits[6:] == "ff" else digits


def _edge(document: dict[str, Any], name: str, default: int, where: str) -> int:
    value = document.get(name, default)
    if type(value) is not int or not 1 <= value <= MAX_EDGE:
        raise ApiError(422, "INVALID_REQUEST", f"{where}{name} must be an integer from 1 to {MAX_EDGE}")
    return value


def parse_task_id(raw: str | None) -> str:
    if not raw:
        raise ApiError(400, "INVALID_TASK_ID", "task_id query parameter is required")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, "INVALID_TASK_ID", "task_id must be a UUID") from None


MAX_WAIT_SECONDS = 30.0


def parse_wait(raw: str | None) -> float:
    """`wait=N`: seconds (0 < N ≤ 30, decimals allowed) to hold the answer for the task to finish; 0 when absent."""
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_WAIT_SECONDS:  # also refuses nan and inf
        raise ApiError(400, "INVALID_PARAMETER", f"wait must be a number of seconds, more than 0 and at most {MAX_WAIT_SECONDS:.0f}")
    return seconds


def parse_rendition_index(raw: str | None, count: int) -> int:
    """`rendition=N` of GET /thumbnail/file: which of the task's renditions, from 0 (the default)."""
    if raw is None:
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3:
        raise ApiError(400, "INVALID_PARAMETER", "rendition must be a whole number from 0")
    index = int(raw)
    if index >= count:
        raise ApiError(404, "RENDITION_NOT_FOUND",
                       f"the task has {count} rendition{'s' if count != 1 else ''}: rendition goes from 0 to {count - 1}")
    return index
