"""The fetcher's byte budget: reservations wait their turn, in order, and come back when the record is done."""
import asyncio
from collections.abc import Mapping

import pytest

from services.common import stage
from services.common.model import Event, Outgoing
from services.fetcher.budget import ByteBudget
from tests.fakes import FakePublisher
from tests.unit.test_stage_runner import completed_output, requested_record, runner


async def test_reservations_wait_until_the_bytes_are_given_back() -> None:
    budget = ByteBudget(100)
    first = await budget.reserve(60)
    waiting = asyncio.ensure_future(budget.reserve(50))
    await asyncio.sleep(0)
    assert not waiting.done() and budget.reserved == 60
    first()
    second = await asyncio.wait_for(waiting, 1)
    assert budget.reserved == 50
    second()
    second()  # a release is counted once
    assert budget.reserved == 0


async def test_first_come_first_served_so_a_large_one_is_not_starved() -> None:
    budget = ByteBudget(100)
    held = await budget.reserve(90)
    large = asyncio.ensure_future(budget.reserve(100))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(budget.reserve(5))  # would fit now, but the large one came first
    await asyncio.sleep(0)
    assert not small.done()
    held()
    release_large = await asyncio.wait_for(large, 1)
    assert not small.done() and budget.reserved == 100
    release_large()
    (await asyncio.wait_for(small, 1))()
    assert budget.reserved == 0


async def test_a_reservation_larger_than_the_budget_takes_all_of_it() -> None:
    budget = ByteBudget(100)
    release = await budget.reserve(10_000)
    assert budget.reserved == 100
    release()


async def test_a_cancelled_wait_takes_nothing_and_lets_the_next_through() -> None:
    budget = ByteBudget(100)
    held = await budget.reserve(80)
    big = asyncio.ensure_future(budget.reserve(50))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(budget.reserve(20))
    await asyncio.sleep(0)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    (await asyncio.wait_for(small, 1))()
    held()
    assert budget.reserved == 0


async def test_what_a_record_holds_is_released_after_its_outputs_are_published() -> None:
    budget = ByteBudget(100)
    publisher = FakePublisher()
    seen_at_publish: list[int] = []
    original = publisher.publish_event

    async def publish_event(event: Event, headers=None, *, topic=None) -> None:
        seen_at_publish.append(budget.reserved)
        await original(event, headers, topic=topic)

    publisher.publish_event = publish_event  # type: ignore[method-assign]

    async def download_then_complete(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        assert stage.hold_until_handled(await budget.reserve(70))
        return completed_output(event)

    await runner(publisher, download_then_complete).handle(requested_record())
    assert seen_at_publish == [70] and budget.reserved == 0
    assert not stage.hold_until_handled(lambda: None)  # outside a record: the caller keeps it
