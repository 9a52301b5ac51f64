"""Consumer lag, computed without Kafka: offsets in, one row per group, topic and partition out."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Partition = tuple[str, int]  # (topic, partition)


class LagError(Exception):
    """The lag cannot be read; the message tells the operator why."""


@dataclass(frozen=True)
class PartitionLag:
    """A group's position on one partition, and the partition's retained range [earliest, log_end)."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed an offset here
    earliest: int
    log_end: int

    @property
    def lag(self) -> int:
        """Records the group has still to read. Without a commit, or with one older than what is retained, the
        count starts at the earliest retained offset: that is where the stages start (auto.offset.reset=earliest)."""
        start = self.earliest if self.committed is None else max(self.committed, self.earliest)
        return max(0, self.log_end - start)


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


def group_lag(
    group: str,
    topics: Iterable[str],
    watermarks: Mapping[Partition, tuple[int, int]],
    committed: Mapping[Partition, int],
    *,
    state: str = "UNKNOWN",
    members: int = 0,
) -> GroupLag:
    """The group's lag on every partition of `topics`; `watermarks` maps a partition to (earliest, log end).

    A negative committed offset is Kafka's "none" (OFFSET_INVALID), the same as no entry.
    """
    wanted = frozenset(topics)
    rows = tuple(
        PartitionLag(topic, partition, _offset(committed.get((topic, partition))), low, high)
        for (topic, partition), (low, high) in sorted(watermarks.items()) if topic in wanted
    )
    return GroupLag(group, state, members, rows)


def _offset(committed: int | None) -> int | None:
    return committed if committed is not None and committed >= 0 else None


HEADER = ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG")


def table(groups: Iterable[GroupLag]) -> list[str]:
    """Aligned columns, a row per partition and a total row per group (with its state and live members)."""
    rows: list[tuple[str, ...]] = [HEADER]
    for g in groups:
        rows += [(g.group, p.topic, str(p.partition), "-" if p.committed is None else str(p.committed),
                  str(p.log_end), str(p.lag)) for p in g.partitions]
        rows.append((g.group, f"total ({g.state.lower()}, {g.members} member{'' if g.members == 1 else 's'})",
                     "", "", "", str(g.total)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def as_json(groups: Iterable[GroupLag]) -> dict[str, Any]:
    return {"groups": [
        {"group": g.group, "state": g.state, "members": g.members, "total_lag": g.total, "partitions": [
            {"topic": p.topic, "partition": p.partition, "committed": p.committed, "earliest": p.earliest,
             "log_end": p.log_end, "lag": p.lag} for p in g.partitions
        ]} for g in groups
    ]}
