"""keep_freed_memory: an image's buffers, freed and allocated again, reuse the same pages instead of faulting in
fresh ones; an operator's own glibc variables are left to decide."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from services.common.allocator import ENVIRONMENT

# What a render process does per request: receive an image into a buffer, copy it out, let both go.
PROBE = """
import json, resource, sys
from services.common.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else None

def one_image():
    received = bytearray(460_000)
    image = bytes(received)
    del received, image

for _ in range(5):
    one_image()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    one_image()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **extra: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT} | extra
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True,
                         timeout=60)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_freed_image_memory_is_reused_instead_of_faulted_in_again() -> None:
    default, kept = _probe("default"), _probe("kept")
    assert kept["applied"] is True
    assert isinstance(default["faults"], int) and default["faults"] > 100 * 100  # ~190 pages per image
    assert kept["faults"] == 0


def test_an_operators_glibc_variables_win() -> None:
    assert _probe("kept", MALLOC_TRIM_THRESHOLD_="131072")["applied"] is False
