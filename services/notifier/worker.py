"""Notifier process: consumers of the outcome topics and of the webhook retry topic, around the notifier core."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial
from typing import Protocol

from cachetools import TTLCache

from services.common import metrics, stage
from services.common.cassandra import TRANSIENT_ERRORS, connect, hosts_up
from services.common.health import Check
from services.common.kafka import KafkaPublisher
from services.common.model import COMPLETED, FAILED, WEBHOOK_RETRY, ApiKey, Event, Outgoing
from services.common.repositories import ApiKeyRepository, TaskRepository
from services.common.retry_topic import RetryPolicy, wait_seconds
from services.common.settings import Settings

from .core import STAGE, Receiver, SigningSecret, WebhookRows, notify
from .sender import WebhookSender

CONCURRENCY = 64  # deliveries in flight per member: mostly waiting on receivers


KEY_CACHE_SECONDS = 60.0  # a key's webhook secret never changes; the cache only saves a read per delivery


def signing_secret_of(settings: Settings, api_keys: KeyRecords) -> SigningSecret:
    """What a task's webhooks are signed with: the webhook secret of the API key that created it (printed by
    `thumbs keys create`), else the service's THUMBS_WEBHOOK_SECRET."""
    records: TTLCache[str, ApiKey | None] = TTLCache(10_000, KEY_CACHE_SECONDS)

    async def signing_secret(owner: str | None) -> str:
        if owner:
            if owner not in records:
                records[owner] = await api_keys.get(owner)
            record = records[owner]
            if record is not None:
                return record.webhook_secret
        return settings.webhook_secret

    return signing_secret


class KeyRecords(Protocol):
    async def get(self, name: str) -> ApiKey | None: ...


def build_notifier(settings: Settings, *, publisher: stage.Publisher | None = None, rows: WebhookRows | None = None,
                   receiver: Receiver | None = None, signing_secret: SigningSecret | None = None) -> stage.Built:
    """The notifier with real adapters for every port not given; it closes only what it opened."""
    closers: list[stage.Close] = []
    checks: dict[str, Check] = {}
    if receiver is None:
        receiver = sender = WebhookSender(settings)
        closers.append(sender.close)
    if publisher is None:
        publisher = kafka = KafkaPublisher(settings)
        closers.append(kafka.close)
    if rows is None or signing_secret is None:
        session = connect(settings)
        closers.append(session.cluster.shutdown)
        checks["cassandra"] = partial(hosts_up, session)
        rows = rows or TaskRepository(session, settings.keyspace, settings.task_ttl_seconds)
        signing_secret = signing_secret or signing_secret_of(settings, ApiKeyRepository(session, settings.keyspace))
    secret_of = signing_secret
    policy = RetryPolicy(settings.webhook_max_attempts, settings.webhook_retry_base_seconds)
    for outcome in metrics.WEBHOOK_OUTCOMES:
        metrics.WEBHOOK_DELIVERIES.labels(outcome)  # at 0 from the start

    async def fresh(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        notified = await notify(event, headers, rows, receiver, secret_of, policy)
        if notified.outcome is not None:
            metrics.WEBHOOK_DELIVERIES.labels(notified.outcome).inc()
        return notified.outputs

    async def retried(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        await asyncio.sleep(wait_seconds(headers, time.time()))
        return await fresh(event, headers)

    # As in the fetcher: retries wait out their delay in a member of their own, never holding up fresh outcomes.
    def member(handler: stage.Handler, topics: tuple[str, ...]) -> stage.Subscription:
        runner = stage.StageRunner(STAGE, settings, publisher, handler, transient=TRANSIENT_ERRORS)
        return stage.Subscription(settings, runner, [settings.topic(t) for t in topics], concurrency=CONCURRENCY)

    return stage.Built([member(fresh, (COMPLETED, FAILED)), member(retried, (WEBHOOK_RETRY,))], closers, checks)


def main(settings: Settings) -> int:
    return stage.run(build_notifier(settings), settings, settings.notifier_metrics_port)
