"""Builds the API's real Kafka and Cassandra adapters (called from the app's lifespan, never at import)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.common.cassandra import connect
from services.common.kafka import KafkaPublisher
from services.common.repositories import ApiKeyRepository, IdempotencyRepository, TaskRepository, ThumbnailRepository
from services.common.settings import Settings

# The API answers 503 when Kafka does not acknowledge within this time, rather than hang the client.
API_DELIVERY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Adapters:
    publisher: KafkaPublisher
    tasks: TaskRepository
    thumbnails: ThumbnailRepository
    idempotency_keys: IdempotencyRepository
    api_keys: ApiKeyRepository


def real_adapters(settings: Settings) -> tuple[Adapters, list[Callable[[], None]]]:
    publisher = KafkaPublisher(settings, delivery_timeout_s=API_DELIVERY_TIMEOUT_S)
    session = connect(settings)
    adapters = Adapters(
        publisher,
        TaskRepository(session, settings.keyspace, settings.task_ttl_seconds),
        ThumbnailRepository(session, settings.keyspace),
        IdempotencyRepository(session, settings.keyspace),
        ApiKeyRepository(session, settings.keyspace),
    )
    return adapters, [publisher.close, session.cluster.shutdown]
