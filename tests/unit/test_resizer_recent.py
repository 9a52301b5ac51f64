from datetime import UTC, datetime

from services.common.model import FRESH_S, REDRIVE_HEADER, REPLAY_HEADER, Event, Fetched, StoredThumbnail
from services.resizer.recent import CLOCK_MARGIN_S, RecentThumbnails, fetcher_lookup_holds
from tests.fakes import FakeThumbnails

SHA = "ab" * 32
THUMBNAIL = StoredThumbnail("image/jpeg", 100, 56, 1900, b"\xff\xd8" * 950)


def _fetched_at(seconds: float) -> Event:
    moment = datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    return Event("t-1", Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", b"x"), "fetcher", occurred_at=moment)


def test_the_fetchers_lookup_holds_only_for_records_fetched_lately_after_the_partitions_were_taken() -> None:
    owned_since = 1_800_000_000.0
    fetched = owned_since + CLOCK_MARGIN_S + 1
    now = fetched + 2
    assert fetcher_lookup_holds(_fetched_at(fetched), {}, owned_since, now)
    assert not fetcher_lookup_holds(_fetched_at(owned_since - 60), {}, owned_since, now)  # before a rebalance or restart
    assert not fetcher_lookup_holds(_fetched_at(owned_since + 5), {}, owned_since, now)  # within the clocks' margin
    assert not fetcher_lookup_holds(_fetched_at(fetched), {}, owned_since, fetched + FRESH_S + 1)  # a backlog
    assert not fetcher_lookup_holds(_fetched_at(fetched), {REPLAY_HEADER: b"1"}, owned_since, now)  # checked long ago
    assert not fetcher_lookup_holds(_fetched_at(fetched), {REDRIVE_HEADER: b"1"}, owned_since, now)


async def test_memory_answers_what_this_process_stored_or_found_and_asks_nothing_else() -> None:
    store = FakeThumbnails()
    recent = RecentThumbnails(store)
    assert await recent.known.find(SHA, "k1") is None and store.finds == 0  # the fetcher's miss stands
    await recent.known.put(SHA, "k1", THUMBNAIL)
    assert store.rows[(SHA, "k1")] == THUMBNAIL
    assert await recent.known.find(SHA, "k1") == StoredThumbnail("image/jpeg", 100, 56, 1900)  # facts, no bytes
    store.rows[(SHA, "k2")] = THUMBNAIL  # stored by someone else, e.g. before a rebalance
    assert await recent.read_through.find(SHA, "k2") is not None and store.finds == 1
    assert await recent.known.find(SHA, "k2") is not None and store.finds == 1  # remembered since


async def test_memory_is_bounded() -> None:
    store = FakeThumbnails()
    recent = RecentThumbnails(store, size=2)
    for key in ("k1", "k2", "k3"):
        await recent.known.put(SHA, key, THUMBNAIL)
    assert await recent.known.find(SHA, "k1") is None  # the oldest went; a read-through would ask Cassandra
    assert await recent.read_through.find(SHA, "k1") is not None and store.finds == 1
