"""The stats core: which records count as what, counted once, and the GET /stats document."""
import math

import pytest

from services.common.events import encode
from services.common.model import REPLAY_HEADER, REQUESTED_AT_HEADER, Completed, Event, Failed, Hashed, Rendition, Requested
from services.stats.core import (
    LATENCY_RATIO,
    Observation,
    add,
    count,
    decode_batch,
    empty,
    encode_batch,
    latency_bucket,
    observe,
    percentiles,
    report,
)

SHA = "ab" * 32
TASK = "8d7f3c52-2a4e-4b8e-9a51-0c7b6f1e2d3a"


def record(payload, **headers: bytes) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    encoded = encode(Event(task_id=TASK, payload=payload, producer="test", occurred_at="2026-12-02T10:00:01.500000Z"))
    return encoded.value, [*encoded.headers, *headers.items()]


def completed(deduplicated: bool = False) -> Completed:
    return Completed(SHA, Rendition(), 1, "image/jpeg", 100, 75, 2048, deduplicated)


def test_requested_completed_and_failed_records_make_their_observations() -> None:
    requested_at = str(1796205600000).encode()  # 2026-12-02T10:00:00Z in ms: the outcomes come 1.5 s later
    assert observe(*record(Requested("https://example.com/a.jpg")), "p.thumbnail.requested", 2, 40, 1796205600.25) == Observation(
        "requested", "p.thumbnail.requested:2", 40, 1796205600.25, TASK)
    assert observe(*record(completed(deduplicated=True), **{REQUESTED_AT_HEADER: requested_at}), "c", 0, 7) == Observation(
        "succeeded", "c:0", 7, task_id=TASK, deduplicated=True, latency_ms=1500.0)
    assert observe(*record(Failed("fetcher", "NOT_AN_IMAGE", "text/plain"), **{REQUESTED_AT_HEADER: requested_at}),
                   "f", 1, 3) == Observation("failed", "f:1", 3, task_id=TASK, error_code="NOT_AN_IMAGE", latency_ms=1500.0)


def test_replays_bad_headers_other_events_and_garbage() -> None:
    replayed = observe(*record(Requested("https://example.com/a.jpg"), **{REPLAY_HEADER: b"2026-12-02T10:00:00Z"}), "r", 0, 1)
    assert replayed is not None and replayed.replayed
    no_latency = observe(*record(completed(), **{REQUESTED_AT_HEADER: b"yesterday"}), "c", 0, 1)
    assert no_latency is not None and no_latency.latency_ms is None
    assert observe(*record(Hashed("https://example.com/a.jpg", SHA, "image/jpeg", 10)), "h", 0, 1) is None
    assert observe(b"not json", [], "r", 0, 1) is None
    assert observe(None, [], "r", 0, 1) is None


def test_batches_travel_as_json_and_bad_entries_are_counted_out() -> None:
    observations = [Observation("failed", "f:1", 3, 1796205600.5, error_code="X", latency_ms=2.5), Observation("requested", "r:0", 9)]
    assert decode_batch(encode_batch(observations)) == (observations, 0)
    assert decode_batch(b'[{"kind": "exploded", "source": "r:0", "offset": 1}, {"kind": "requested"}, 7]') == ([], 3)
    assert decode_batch(b"\xff") == ([], 1) and decode_batch(b"{}") == ([], 1) and decode_batch(None) == ([], 1)


def test_a_record_is_counted_once_per_source_partition_mark() -> None:
    first = add(None, Observation("requested", "r:0", 5))
    assert first is not None and first["requested"] == 1
    assert add(first, Observation("requested", "r:0", 5)) is None  # the same record again
    assert add(first, Observation("requested", "r:0", 4)) is None  # an older one: counted before this mark
    other_partition = add(first, Observation("requested", "r:1", 0))
    assert other_partition is not None and other_partition["requested"] == 2
    assert first["requested"] == 1  # tallies are values: add never changes its argument


def test_counts_by_kind_code_dedupe_and_replay() -> None:
    tally = empty()
    observations = [
        Observation("requested", "r:0", 0), Observation("requested", "r:0", 1), Observation("requested", "r:0", 2),
        Observation("succeeded", "c:0", 0, deduplicated=True, latency_ms=12.0),
        Observation("succeeded", "c:0", 1, latency_ms=30.0),
        Observation("failed", "f:0", 0, error_code="SOURCE_TIMEOUT", latency_ms=30_000.0),
        Observation("requested", "r:0", 3, replayed=True), Observation("succeeded", "c:0", 2, replayed=True),
    ]
    for observation in observations:
        counted = add(tally, observation)
        assert counted is not None
        tally = counted
    assert {k: tally[k] for k in ("requested", "succeeded", "failed", "deduplicated", "replayed")} == {
        "requested": 3, "succeeded": 2, "failed": 1, "deduplicated": 1, "replayed": 2}
    assert tally["failures_by_code"] == {"SOURCE_TIMEOUT": 1}
    assert sum(tally["latency_buckets"].values()) == 3  # replayed outcomes add no latency


@pytest.mark.parametrize("ms", [1.5, 12.0, 99.0, 250.0, 4_000.0, 59_000.0])
def test_a_single_latency_reads_back_within_five_percent(ms: float) -> None:
    got = percentiles({str(latency_bucket(ms)): 1})
    assert got is not None and all(abs(value - ms) / ms < 0.05 for value in got.values())


def test_percentiles_of_a_spread() -> None:
    buckets: dict[str, int] = {}
    for ms in range(1, 1001):  # 1..1000 ms, one each
        key = str(latency_bucket(float(ms)))
        buckets[key] = buckets.get(key, 0) + 1
    got = percentiles(buckets)
    assert got is not None
    for name, exact in (("p50", 500), ("p95", 950), ("p99", 990)):
        assert abs(got[name] - exact) / exact < 0.05, (name, got)
    assert percentiles({}) is None
    assert math.isclose(LATENCY_RATIO ** 8, 2.0)


def test_report_has_the_documented_shape_oldest_window_first() -> None:
    late = add(None, Observation("succeeded", "c:0", 0, latency_ms=40.0))
    early = add(None, Observation("failed", "f:0", 0, error_code="NOT_AN_IMAGE"))
    totals = add(add(None, Observation("succeeded", "c:0", 0, latency_ms=40.0)), Observation("failed", "f:0", 0, error_code="NOT_AN_IMAGE"))
    assert late and early and totals
    document = report(totals, [(1796205610.0, late), (1796205600.0, early)])
    assert document["window_seconds"] == 10
    assert document["totals"] == {"requested": 0, "succeeded": 1, "failed": 1, "deduplicated": 0, "replayed": 0,
                                  "repeated": 0, "failures_by_code": {"NOT_AN_IMAGE": 1}}
    assert [w["start"] for w in document["windows"]] == ["2026-12-02T10:00:00Z", "2026-12-02T10:00:10Z"]
    assert document["windows"][0]["latency_ms"] is None  # a failure without the request time: no latency
    assert document["windows"][1]["latency_ms"]["p50"] == pytest.approx(40.0, rel=0.05)
    assert report(None, [])["totals"]["requested"] == 0 and report(None, [])["consumer_lag"] == {}
    assert report(None, [], {"fetcher": 3})["consumer_lag"] == {"fetcher": 3}


def test_a_batch_counts_into_totals_and_each_observations_window_once() -> None:
    stored: dict[float, dict] = {}
    batch = [Observation("requested", "r:0", 0, 1796205601.0), Observation("requested", "r:0", 1, 1796205609.9),
             Observation("succeeded", "c:0", 0, 1796205612.0, latency_ms=20.0)]
    first = count(None, stored.get, batch)
    assert (first.counted, first.duplicates) == (3, 0) and first.totals is not None
    assert first.totals["requested"] == 2 and first.totals["succeeded"] == 1
    assert sorted(first.windows) == [1796205600.0, 1796205610.0]
    assert first.windows[1796205600.0]["requested"] == 2 and first.windows[1796205610.0]["succeeded"] == 1
    stored.update(first.windows)

    # After a crash the same records come again, regrouped, with a new one: only the new one counts.
    again = count(first.totals, stored.get, [*batch[1:], Observation("failed", "f:2", 0, 1796205613.0, error_code="E")])
    assert (again.counted, again.duplicates) == (1, 2) and again.totals is not None
    assert again.totals["failed"] == 1 and again.totals["requested"] == 2
    assert list(again.windows) == [1796205610.0]  # the untouched window is not written again
    assert again.windows[1796205610.0]["failed"] == 1 and again.windows[1796205610.0]["succeeded"] == 1

    nothing_new = count(again.totals, {**stored, **again.windows}.get, batch)
    assert nothing_new.totals is None and nothing_new.windows == {} and nothing_new.duplicates == 3


def test_a_tasks_outcome_published_again_counts_as_repeated_once_per_record() -> None:
    remembered: dict[str, str] = {}
    first = Observation("succeeded", "c:0", 4, 1796205601.0, task_id="t1", deduplicated=False, latency_ms=30.0)
    again = Observation("succeeded", "c:1", 9, 1796205602.0, task_id="t1", deduplicated=True, latency_ms=900.0)
    counted = count(None, {}.get, [first], lambda task, _at: remembered.get(task))
    assert counted.totals is not None and counted.totals["succeeded"] == 1
    assert counted.first_outcomes == {"t1": (1796205601.0, "c:0@4")}
    remembered["t1"] = "c:0@4"

    repeated = count(counted.totals, {}.get, [again, first], lambda task, _at: remembered.get(task))
    assert repeated.totals is not None
    assert (repeated.totals["succeeded"], repeated.totals["repeated"], repeated.totals["deduplicated"]) == (1, 1, 0)
    assert (repeated.counted, repeated.duplicates) == (1, 1)  # the first record again: already counted by its mark
    assert sum(repeated.totals["latency_buckets"].values()) == 1  # a repeat adds no latency


def test_after_a_crash_the_first_outcome_counts_whichever_write_survived() -> None:
    outcome = Observation("failed", "f:0", 2, 1796205601.0, task_id="t2", error_code="E")
    # The remembered outcome survived, the totals did not: the same record counts.
    lost_totals = count(None, {}.get, [outcome], lambda _task, _at: "f:0@2")
    assert lost_totals.totals is not None and lost_totals.totals["failed"] == 1 and lost_totals.totals["repeated"] == 0
    # The totals survived, the memory did not: nothing counts again, and the record is remembered.
    lost_memory = count(lost_totals.totals, {}.get, [outcome])
    assert lost_memory.totals is None and lost_memory.first_outcomes == {"t2": (1796205601.0, "f:0@2")}


def test_requests_and_replays_are_not_outcomes_to_remember() -> None:
    counted = count(None, {}.get, [Observation("requested", "r:0", 0, 1.0, task_id="t3"),
                                   Observation("succeeded", "c:0", 0, 1.0, task_id="t3", replayed=True)])
    assert counted.first_outcomes == {} and counted.totals is not None and counted.totals["replayed"] == 1
