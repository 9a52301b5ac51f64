"""Idempotency-Key claims on a real node: one winner among processes racing on a key, and the conditional writes
(publish, release, take-over) as lightweight transactions read them back."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cassandra.cluster import Session

from services.api.idempotency import claim_time
from services.common.cassandra import connect, migrate
from services.common.model import IdempotencyClaim
from services.common.repositories import IdempotencyRepository
from services.common.settings import Settings

from .stack import drop_environment, isolated_env, settings_of

pytestmark = pytest.mark.integration
PROCESSES = 3


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    isolated = settings_of(isolated_env(kafka_bootstrap, cassandra_contact, Path(tmp_path_factory.mktemp("keys"))))
    migrate(isolated)
    try:
        yield isolated
    finally:
        drop_environment(isolated)


@pytest.fixture(scope="module")
def sessions(settings: Settings) -> Iterator[list[Session]]:
    """One session per simulated API process: separate connections, as separate processes have."""
    opened = [connect(settings) for _ in range(PROCESSES)]
    yield opened
    for session in opened:
        session.cluster.shutdown()


def _claim(fingerprint: str = "f") -> IdempotencyClaim:
    return IdempotencyClaim(str(uuid.uuid4()), str(uuid.uuid4()), fingerprint, claim_time())


def test_processes_racing_on_one_key_agree_on_one_claim(settings: Settings, sessions: list[Session]) -> None:
    stores = [IdempotencyRepository(session, settings.keyspace) for session in sessions]

    async def race(key: str) -> tuple[list[IdempotencyClaim], list[IdempotencyClaim | None]]:
        claims = [_claim() for _ in stores]
        answers = await asyncio.gather(*(store.claim("", key, claim) for store, claim in zip(stores, claims, strict=True)))
        return claims, list(answers)

    for attempt in range(10):
        claims, answers = asyncio.run(race(f"race-{attempt}"))
        winners = [claim for claim, answer in zip(claims, answers, strict=True) if answer is None]
        assert len(winners) == 1, answers
        assert all(answer == winners[0] for answer in answers if answer is not None)  # the winner's, as stored


def test_release_and_take_over_are_conditional(settings: Settings, sessions: list[Session]) -> None:
    store = IdempotencyRepository(sessions[0], settings.keyspace)

    async def scenario() -> None:
        first = _claim()
        assert await store.claim("", "k", first) is None
        await store.release("", "k", _claim())  # another task's release leaves the claim alone
        assert await store.claim("", "k", _claim()) == first

        unpublished = _claim()
        assert await store.claim("", "dead", unpublished) is None
        renewed = unpublished.claimed_at + timedelta(seconds=31)
        assert await store.take_over("", "dead", unpublished, renewed)
        assert not await store.take_over("", "dead", unpublished, renewed)  # a second taker loses: the time moved on
        stored = await store.claim("", "dead", _claim())
        assert stored == IdempotencyClaim(unpublished.task_id, unpublished.event_id, "f", renewed)

        await store.release("", "dead", stored)
        fresh = _claim()
        assert await store.claim("", "dead", fresh) is None  # released: the key is free for a new request

        # Scopes are separate namespaces (one per client once the API knows its clients).
        assert await store.claim("client-a", "k", _claim()) is None

    asyncio.run(scenario())


def test_claims_expire_after_a_day_and_a_take_over_renews_every_cell(settings: Settings, sessions: list[Session]) -> None:
    store = IdempotencyRepository(sessions[0], settings.keyspace)
    claim = _claim()
    asyncio.run(store.claim("", "ttl", claim))
    query = (f"SELECT TTL(task_id) AS task_ttl, TTL(fingerprint) AS fingerprint_ttl, TTL(claimed_at) AS claimed_ttl "
             f"FROM {settings.keyspace}.idempotency_keys WHERE scope = '' AND idempotency_key = 'ttl'")
    for _ in range(2):
        (row,) = sessions[0].execute(query).all()
        # Every cell of the claim expires together, a day after it was written: none outlives the others.
        assert 86400 - 60 < row.task_ttl <= 86400 and row.task_ttl == row.fingerprint_ttl == row.claimed_ttl, row
        assert asyncio.run(store.take_over("", "ttl", claim, claim.claimed_at + timedelta(seconds=31)))
        claim = IdempotencyClaim(claim.task_id, claim.event_id, claim.fingerprint, claim.claimed_at + timedelta(seconds=31))
