"""Commit positions of the consumer edge: never past a record still in flight."""
from services.common.stage import Offsets

T = "thumbnail.fetched"


def positions(offsets: Offsets) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): tp.offset for tp in offsets.committable()}


def test_position_stops_before_the_oldest_record_in_flight() -> None:
    offsets = Offsets()
    for n in (10, 11, 12):
        offsets.start(T, 0, n)
    offsets.finish(T, 0, 11)
    offsets.finish(T, 0, 12)
    assert positions(offsets) == {(T, 0): 10}  # 10 is unfinished: 11 and 12 are redone after a crash
    offsets.finish(T, 0, 10)
    assert positions(offsets) == {(T, 0): 13}


def test_only_moved_positions_are_reported_and_partitions_are_independent() -> None:
    offsets = Offsets()
    offsets.start(T, 0, 5)
    offsets.start(T, 1, 7)
    offsets.finish(T, 1, 7)
    assert positions(offsets) == {(T, 0): 5, (T, 1): 8}
    assert positions(offsets) == {}  # nothing moved since
    offsets.finish(T, 0, 5)
    assert positions(offsets) == {(T, 0): 6}


def test_a_revoked_partition_is_forgotten_and_late_finishes_are_ignored() -> None:
    offsets = Offsets()
    offsets.start(T, 0, 1)
    offsets.start(T, 2, 4)
    assert [(tp.partition, tp.offset) for tp in offsets.committable([(T, 2)])] == [(2, 4)]
    offsets.forget([(T, 2)])
    offsets.finish(T, 2, 4)
    assert positions(offsets) == {(T, 0): 1}


def test_waiting_for_revoked_partitions_ends_when_their_records_finish() -> None:
    offsets = Offsets()
    offsets.start(T, 0, 1)
    assert offsets.wait_finished([(T, 0)], timeout=0.01) is False
    assert offsets.wait_finished([(T, 1)], timeout=0.01) is True  # nothing in flight there
    offsets.finish(T, 0, 1)
    assert offsets.wait_finished([(T, 0)], timeout=0.01) is True
