"""glibc's allocator, told to keep the memory an image leaves behind for the next one.

Every image passes through the fetcher, the resizer and a render process as a few buffers of hundreds of KiB
to MiBs. glibc sizes its thresholds from the last large block freed: the trim threshold becomes twice that
block, so freeing one image's buffers hands the top of the heap back to the kernel, and the next image faults
fresh, zeroed pages in again (two `brk` calls per image in a render process, by strace). Fixed thresholds keep
up to TRIM_BYTES of freed heap for reuse instead: handing an image to a render process cost the child about
0.2 ms instead of 0.5 (bench/render_handover.py).
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
TRIM_BYTES = 64 * 1024 * 1024  # freed heap kept for reuse, per process
MMAP_BYTES = 32 * 1024 * 1024  # blocks below this come from the heap (glibc's most on 64-bit), so are reused too
# glibc's own variables for the same two settings: an operator who sets either decides both
ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Fixes glibc's trim and mmap thresholds in this process; False where there is nothing to set (another C
    library, another system) or the environment already sets them."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl (Alpine) has neither the name nor the function
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
