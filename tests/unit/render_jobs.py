"""Jobs for tests/unit/test_render_processes.py: module-level, so a spawned process can import them."""
from __future__ import annotations

import os
import time
from typing import Any

from services.common.errors import ErrorCode, PermanentError


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


def echo(data: bytes, header: Any) -> tuple[int, Any, int]:
    """What it was given, and which process answered; headers ask for a pause, a crash or an error."""
    if header == "slow":
        time.sleep(0.3)
    elif header == "crash":
        os._exit(3)  # as a decoder that segfaults: no exception, no reply
    elif header == "corrupt":
        raise PermanentError(ErrorCode.IMAGE_CORRUPT, "bad bytes")
    elif header == "unpicklable":
        raise Unpicklable("it says why")
    return len(data), header, os.getpid()


def cannot_start() -> None:
    """An initializer that fails, as a render process missing a library would."""
    raise ImportError("a library is missing")
