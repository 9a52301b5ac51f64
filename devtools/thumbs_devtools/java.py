"""Which `java` runs the servers: both need Java 17 (Cassandra 5.0 fails on 18+)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

JDK17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")


def java_binary(environ: Mapping[str, str] | None = None) -> str:
    """$JAVA_HOME/bin/java if set, else the distribution's JDK 17, else `java` on PATH."""
    # JAVA_HOME is the JVM's own convention, not a THUMBS_* setting, so it is read here.
    environ = os.environ if environ is None else environ
    home = environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    if (JDK17 / "bin" / "java").exists():
        return str(JDK17 / "bin" / "java")
    return shutil.which("java") or "java"
