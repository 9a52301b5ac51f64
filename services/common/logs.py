"""Logging for every process: one line per event, JSON for a log collector or text for a person at a terminal.

Each line carries the process's name and whatever context is bound while it is logged: the edge binds the
record being handled (task, correlation id, event type, topic/partition/offset), so a line logged deep in a
core names its task without every call passing it along.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

_CONTEXT: ContextVar[Mapping[str, object]] = ContextVar("thumbs_log_context", default=MappingProxyType({}))
_installed: list[logging.Handler] = []
QUIET = {"cassandra": logging.WARNING}  # a line per host discovered is noise


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Adds `fields` to every line logged inside the block (and in tasks it starts)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class _Context(logging.Filter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self._process
        for name, value in _CONTEXT.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class _Text(logging.Formatter):
    """`time LEVEL [process] logger: message key=value ...` — the bound context after the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={v}" for k, v in _CONTEXT.get().items())
        return f"{line} {context}" if context else line


def uses_json(log_format: str, stream: TextIO) -> bool:
    """`auto` means JSON unless a person is watching: containers and supervisors capture the stream."""
    return log_format == "json" or (log_format == "auto" and not stream.isatty())


def configure(*, process: str, log_format: str = "auto", level: str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Sends every log line to `stream` (stderr) in the chosen format; replaces what an earlier call installed."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if uses_json(log_format, stream):
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(process_name)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "process_name": "process", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        ))
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s [%(process_name)s] %(name)s: %(message)s"))
    handler.addFilter(_Context(process))
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    return handler
