from services.api.thumbnail_cache import ENTRY_OVERHEAD, CachedThumbnails
from services.common.model import StoredThumbnail
from tests.fakes import FakeThumbnails


def _thumbnail(size: int) -> StoredThumbnail:
    return StoredThumbnail("image/jpeg", 10, 10, size, b"x" * size)


async def test_a_kept_thumbnail_is_answered_without_the_store() -> None:
    store = FakeThumbnails()
    cached = CachedThumbnails(store, max_bytes=10_000)
    await cached.put("a", "k", _thumbnail(100))
    assert await cached.find("a", "k") == await cached.find("a", "k") == _thumbnail(100)
    assert store.finds == 1


async def test_misses_are_not_kept_and_the_bytes_bound_holds() -> None:
    store = FakeThumbnails()
    cached = CachedThumbnails(store, max_bytes=2 * (1000 + ENTRY_OVERHEAD))
    assert await cached.find("a", "missing") is None
    store.rows[("a", "missing")] = _thumbnail(10)
    assert await cached.find("a", "missing") == _thumbnail(10)  # a miss was not remembered as "absent"
    for key in ("k1", "k2", "k3"):
        store.rows[("a", key)] = _thumbnail(1000)
        await cached.find("a", key)
    finds = store.finds
    await cached.find("a", "k3")
    await cached.find("a", "k1")  # the least recently used went out to keep the bound
    assert store.finds == finds + 1


async def test_a_thumbnail_larger_than_the_whole_cache_is_served_not_kept() -> None:
    store = FakeThumbnails()
    store.rows[("a", "big")] = _thumbnail(5000)
    cached = CachedThumbnails(store, max_bytes=1000)
    assert (await cached.find("a", "big")) == (await cached.find("a", "big")) == _thumbnail(5000)
    assert store.finds == 2
    assert await CachedThumbnails(store, max_bytes=0).find("a", "big") == _thumbnail(5000)
