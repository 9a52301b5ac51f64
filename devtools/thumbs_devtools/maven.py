"""Resolves a server's runtime jars with Maven into a per-version cache, once."""
from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

STAMP = "resolved.stamp"


class ResolveError(RuntimeError):
    """Maven could not resolve a server's classpath."""


def cached_lib(cache_dir: Path, pom: Path, properties: Mapping[str, str]) -> Path:
    """The lib dir holding every runtime jar of `pom`; runs Maven only when the cache is not complete."""
    lib = cache_dir / "lib"
    stamp = cache_dir / STAMP
    wanted = _stamp_text(properties)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two `thumbs servers start` at once (two terminals, parallel test runs) must not both fill the cache.
    with (cache_dir / "resolve.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted and lib.is_dir():
            return lib
        # No stamp means an earlier run stopped half-way: start from an empty folder.
        stamp.unlink(missing_ok=True)
        shutil.rmtree(lib, ignore_errors=True)
        partial = cache_dir / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _copy_dependencies(pom, properties, partial, cache_dir / "maven.log")
        partial.rename(lib)
        stamp.write_text(wanted)
        return lib


def _stamp_text(properties: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in sorted(properties.items()))


def _copy_dependencies(pom: Path, properties: Mapping[str, str], out: Path, log: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ResolveError("Maven (`mvn`) is not on PATH; install Maven 3.8+ to download the server jars")
    argv = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={out}", *(f"-D{key}={value}" for key, value in properties.items())]
    with log.open("wb") as sink:
        done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ResolveError(f"mvn exited with {done.returncode} resolving {pom} (full output: {log}):\n{tail}")
