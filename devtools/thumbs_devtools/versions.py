"""Server versions, pinned once in deploy/servers/versions.env of the repository."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Read from the repository, not shipped as package data: docker-compose.yml and the README name these files,
# and this tooling only runs from a checkout (`make` and CI install it editable), so one copy serves all.
SERVERS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "servers"


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
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: thumbs-devtools runs from a repository checkout (pip install -e ./devtools)")
    values = parse_env_file(path.read_text())
    try:
        return Versions(values["KAFKA_VERSION"], values["KAFKA_LOG4J_VERSION"], values["CASSANDRA_VERSION"])
    except KeyError as missing:
        raise RuntimeError(f"{path} does not set {missing}") from None
