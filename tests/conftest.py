"""Shared by every test tier."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A `thumbs` command run in-process (services.cli.main) installs a log handler on the stderr that pytest
    captures for that one test; later tests must not log into it once pytest has closed it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
