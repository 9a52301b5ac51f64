"""Progress lines while a replay runs (at most one a second) and the summary when it ends."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    """Counts records read and sent; `tick` prints a line when `every` seconds have passed."""

    label: str
    total: int
    out: TextIO = field(default=sys.stderr)
    clock: Callable[[], float] = time.monotonic
    every: float = 1.0
    read: int = 0
    selected: int = 0
    published: int = 0

    def __post_init__(self) -> None:
        self.started = self.last = self.clock()

    @property
    def seconds(self) -> float:
        return self.clock() - self.started

    def line(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.label}: {self.read}/{self.total} records read ({rate:.0f}/s), "
                f"{self.selected} selected, {self.published} published")

    def tick(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.out, flush=True)

    def summary(self) -> str:
        skipped = self.read - self.selected
        return (f"{self.label}: selected {self.selected} of {self.read} records read, "
                f"published {self.published}, skipped {skipped}, in {self.seconds:.1f} s")
