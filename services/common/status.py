"""Task status that only moves forward, whatever order (or how often) the projector sees events.

Cassandra keeps, per column, the write with the highest timestamp. Every task write uses
`rank * 10**16 + event time (µs)` as its timestamp, so a later stage always wins over an earlier
one, a newer terminal event (a re-render, a redriven failure) wins over an older one, and a
re-delivered event rewrites identical values: replays are harmless.
"""
from __future__ import annotations

from enum import Enum

_RANK_SPAN = 10**16  # above any µs-since-epoch timestamp until the year 2286


class Status(str, Enum):
    PENDING = "PENDING"
    FETCHED = "FETCHED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"

    @property
    def rank(self) -> int:
        return {"PENDING": 1, "FETCHED": 2, "SUCCESS": 3, "FAILURE": 3}[self.value]

    @property
    def terminal(self) -> bool:
        return self.rank == 3


def write_timestamp(status: Status, occurred_at_micros: int) -> int:
    return status.rank * _RANK_SPAN + occurred_at_micros
