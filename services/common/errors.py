"""One error vocabulary: stable codes users see, split into permanent and transient failures."""
from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Codes a task can end with (`error.code` in the API and in thumbnail.failed events)."""

    INVALID_REQUEST = "INVALID_REQUEST"
    SOURCE_FORBIDDEN_ADDRESS = "SOURCE_FORBIDDEN_ADDRESS"
    SOURCE_UNRESOLVABLE = "SOURCE_UNRESOLVABLE"
    SOURCE_UNREACHABLE = "SOURCE_UNREACHABLE"
    SOURCE_TIMEOUT = "SOURCE_TIMEOUT"
    SOURCE_HTTP_ERROR = "SOURCE_HTTP_ERROR"
    SOURCE_TOO_MANY_REDIRECTS = "SOURCE_TOO_MANY_REDIRECTS"
    SOURCE_BAD_REDIRECT = "SOURCE_BAD_REDIRECT"
    SOURCE_TOO_LARGE = "SOURCE_TOO_LARGE"
    SOURCE_EMPTY = "SOURCE_EMPTY"
    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    IMAGE_TOO_MANY_PIXELS = "IMAGE_TOO_MANY_PIXELS"
    IMAGE_TOO_MANY_FRAMES = "IMAGE_TOO_MANY_FRAMES"
    IMAGE_CORRUPT = "IMAGE_CORRUPT"


class ThumbsError(Exception):
    """Root of every expected failure; carries the code and a message a user can act on."""

    transient = False

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[ErrorCode, str]]:
        # Resize runs in worker processes; errors must survive pickling with their code.
        return (type(self), (self.code, self.message))


class PermanentError(ThumbsError):
    """Retrying cannot help (bad URL, forbidden address, not an image): the task fails at once."""


class TransientError(ThumbsError):
    """May succeed later (timeout, connection refused, 429, 5xx): retried with backoff, then failed."""

    transient = True
