"""Per-key request rates shared by every API process, decided locally.

Counts are kept per key and one-minute window. Each process counts its own admissions; it writes its count to
Cassandra and reads back the sum of every process's in the background every half second, and at once, before
deciding, when it has admitted a twentieth of the key's rate that the others have not been told of
(services/api/access.py). The estimate slides: the previous window's count weighs in by the part of it still
inside the last 60 s, so a client cannot double its rate across a window boundary. Tolerance: each process admits
at most a twentieth of the rate (at least one request) unknown to the others, plus the requests it is deciding
during one sync's round trip; with N processes the limit can be passed by about N × rate / 20.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

WINDOW_S = 60


@dataclass(frozen=True)
class Admission:
    admitted: bool
    limit: int
    remaining: int
    reset_s: int  # until the current window ends
    retry_after_s: int = 0  # when refused: until one more request would fit, were nothing else sent

    def headers(self) -> dict[str, str]:
        shown = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                 "RateLimit-Reset": str(self.reset_s)}
        return shown if self.admitted else {**shown, "Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class Report:
    """This process's count for one key and window, to be written and summed with the other processes'."""

    name: str
    window: int
    own: int


class Quotas:
    def __init__(self) -> None:
        self._own: dict[str, dict[int, int]] = defaultdict(dict)
        self._reported: dict[str, dict[int, int]] = defaultdict(dict)  # own counts as last written
        self._others: dict[str, dict[int, int]] = defaultdict(dict)

    def unreported(self, name: str, limit: int, now: float) -> bool:
        """Whether this process must share its count before deciding: it has admitted, unknown to the others, as
        much as it may, or it has not yet learnt their counts of this window."""
        window = int(now // WINDOW_S)
        reported = self._reported.get(name, {})
        if window not in reported:  # the others' counts of this window are not known yet either
            return True
        return self._own.get(name, {}).get(window, 0) - reported[window] >= max(1, limit // 20)

    def admit(self, name: str, limit: int, now: float) -> Admission:
        window, into = divmod(now, WINDOW_S)
        window, elapsed = int(window), into / WINDOW_S
        current, previous = self._total(name, window), self._total(name, window - 1)
        estimate = previous * (1 - elapsed) + current
        reset_s = math.ceil(WINDOW_S - into)
        if estimate + 1 > limit:
            wait = _wait(limit, current, previous, elapsed)
            return Admission(False, limit, 0, reset_s, max(1, math.ceil(wait)))
        own = self._own[name]
        own[window] = own.get(window, 0) + 1
        return Admission(True, limit, max(0, math.floor(limit - estimate - 1)), reset_s)

    def reports(self, now: float, name: str | None = None) -> list[Report]:
        """What to write: the own counts of every key (or of `name`) in the current and the previous window (the
        previous may have grown just before it ended). Older windows are forgotten here."""
        window = int(now // WINDOW_S)
        for counts in (*self._own.values(), *self._reported.values(), *self._others.values()):
            for old in [w for w in counts if w < window - 1]:
                del counts[old]
        if name is not None:
            self._own[name].setdefault(window, 0)  # a key not yet used here still learns the others' count
        return [Report(key, w, count) for key, counts in self._own.items() if name in (None, key)
                for w, count in counts.items()]

    def synced(self, report: Report, total: int) -> None:
        """Every process's count for the report's key and window, this one's included as it was reported."""
        self._reported[report.name][report.window] = report.own
        self._others[report.name][report.window] = max(0, total - report.own)

    def _total(self, name: str, window: int) -> int:
        return self._own.get(name, {}).get(window, 0) + self._others.get(name, {}).get(window, 0)


def _wait(limit: int, current: int, previous: int, elapsed: float) -> float:
    """Seconds until `previous * (1 - t) + current + 1 <= limit`, counts frozen; into the next window if needed."""
    room = limit - 1 - current
    if room >= 0 and previous > 0:
        return max(0.0, (1 - room / previous) - elapsed) * WINDOW_S
    # In the next window the current count becomes the previous one and fades as that window goes by.
    fade = 1 - (limit - 1) / current if current > 0 else 0.0
    return (1 - elapsed + max(0.0, fade)) * WINDOW_S
