import itertools
import random

import pytest

from services.common.model import (
    FRESH_S,
    REPLAY_HEADER,
    ROW_WRITTEN_HEADER,
    Completed,
    Event,
    Failed,
    Fetched,
    Hashed,
    Rendition,
    Requested,
)
from services.common.status import Status, write_timestamp
from services.projector.core import project, written_by_api
from tests.fakes import FakeTasks

TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"
SHA = "ab" * 32


def _events() -> list[Event]:
    requested = Event(TASK, Requested("http://127.0.0.1/a.jpg"), "api", occurred_at="2026-11-28T10:00:00.000000Z")
    fetched = Event(TASK, Hashed("http://127.0.0.1/a.jpg", SHA, "image/jpeg", 1), "fetcher",
                    occurred_at="2026-11-28T10:00:01.000000Z")
    completed = Event(TASK, Completed(SHA, Rendition(), 1, "image/jpeg", 100, 67, 2000, False), "resizer",
                      occurred_at="2026-11-28T10:00:02.000000Z")
    return [requested, fetched, completed]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_every_arrival_order_ends_in_success(order: tuple[int, ...]) -> None:
    tasks, events = FakeTasks(), _events()
    for index in order:
        await tasks.apply(project(events[index]))
    view = await tasks.get(TASK)
    assert view is not None and view.status is Status.SUCCESS
    assert (view.width, view.height, view.source_sha256) == (100, 67, SHA)
    assert view.source_url == "http://127.0.0.1/a.jpg"


async def test_duplicates_and_shuffles_never_move_status_backwards() -> None:
    rng = random.Random(7)
    events = _events()
    for _ in range(50):
        tasks = FakeTasks()
        stream = events * 3
        rng.shuffle(stream)
        seen_rank = 0
        for event in stream:
            await tasks.apply(project(event))
            view = await tasks.get(TASK)
            assert view is not None
            assert view.status.rank >= seen_rank
            seen_rank = view.status.rank
        assert seen_rank == 3


async def test_newer_terminal_event_wins_so_a_redriven_failure_can_succeed() -> None:
    tasks = FakeTasks()
    failed = Event(TASK, Failed("fetcher", "SOURCE_TIMEOUT", "slow"), "fetcher", occurred_at="2026-11-28T10:00:01.000000Z")
    later_success = _events()[2]
    await tasks.apply(project(later_success))
    await tasks.apply(project(failed))
    view = await tasks.get(TASK)
    assert view is not None and view.status is Status.SUCCESS and view.error_code is None


def test_rank_dominates_event_time() -> None:
    late_pending = write_timestamp(Status.PENDING, 2_000_000_000_000_000)
    early_fetched = write_timestamp(Status.FETCHED, 1_000_000_000_000_000)
    assert early_fetched > late_pending
    assert write_timestamp(Status.FAILURE, 1) > write_timestamp(Status.FETCHED, 4_000_000_000_000_000)


def test_a_fetched_event_from_before_hashed_existed_projects_the_same() -> None:
    at = "2026-11-28T10:00:01.000000Z"
    old = Event(TASK, Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", b"x"), "fetcher", occurred_at=at)
    new = Event(TASK, Hashed("http://127.0.0.1/a.jpg", SHA, "image/jpeg", 1), "fetcher", occurred_at=at)
    assert project(old) == project(new)


def test_the_projector_skips_only_fresh_requests_whose_row_the_api_wrote() -> None:
    requested = Event(TASK, Requested("http://127.0.0.1/a.jpg"), "api")
    made = requested.occurred_at_micros / 1e6
    written = {ROW_WRITTEN_HEADER: b"1"}
    assert written_by_api(requested, written, made + 1)
    assert not written_by_api(requested, {}, made + 1)  # produced straight to Kafka, or the API's write failed
    assert not written_by_api(requested, {**written, REPLAY_HEADER: b"1"}, made + 1)  # the row may have expired
    assert not written_by_api(requested, written, made + FRESH_S + 1)  # a rewind rebuilding lost rows, a backlog
    assert not written_by_api(Event(TASK, Failed("fetcher", "SOURCE_HTTP_ERROR", "404"), "fetcher"), written, made + 1)
