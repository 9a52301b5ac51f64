"""Server versions, pinned once in deploy/servers/versions.env."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.settings import REPO_ROOT

SERVERS_DIR = REPO_ROOT / "deploy" / "servers"


@dataclass(frozen=True)
class Versions:
    kafka: str
    kafka_log4j: str
    cassandra: str


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments are ignored."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def load(path: Path = SERVERS_DIR / "versions.env") -> Versions:
    values = parse_env_file(path.read_text())
    try:
        return Versions(values["KAFKA_VERSION"], values["KAFKA_LOG4J_VERSION"], values["CASSANDRA_VERSION"])
    except KeyError as missing:
        raise RuntimeError(f"{path} does not set {missing}") from None
