"""What every local server offers the lifecycle code: a folder layout, a launch command and a readiness probe."""
from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from services.common.settings import Settings

from .versions import Versions

if TYPE_CHECKING:
    from .topology import Topology

Say = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """<state_dir>/servers/<name>/{conf,data,logs} plus the pid file."""

    home: Path

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def output(self) -> Path:
        """The JVM's stdout and stderr: crashes and bad flags show up here, not in the server log."""
        return self.logs / "stdout.log"

    def create(self) -> None:
        for folder in (self.conf, self.data, self.logs):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Node:
    """Node `node_id` of a server kind in the shape `topology`: named `<kind>-<node_id>`, its own folder."""

    settings: Settings
    versions: Versions
    topology: Topology
    node_id: int = 1
    kind: ClassVar[str]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.node_id}"

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.state_dir / "servers" / self.name)


class Server(Protocol):
    """One local server; `prepare` may download jars and format storage, so it can take a while."""

    @property
    def name(self) -> str: ...

    main_class: ClassVar[str]  # also how its process is recognised in /proc
    ready_timeout: ClassVar[float]

    @property
    def layout(self) -> Layout: ...

    @property
    def main_log(self) -> Path: ...

    def address(self) -> str: ...

    def prepare(self, say: Say) -> list[str]: ...

    def answers(self) -> bool: ...


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """A cheap check before a client probe, so clients do not log connection errors while a JVM boots."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
