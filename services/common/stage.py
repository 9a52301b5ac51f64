"""The thin Kafka edge every stage shares: consume with Faust, decode, call the core, produce, then move on.

At-least-once: Faust commits an offset only after the agent has moved past the record, and the runner
moves past a record only once every output is acknowledged by Kafka (and Cassandra writes are done).
Records that cannot be handled go to the dead-letter topic; Kafka or Cassandra outages stall and retry
the record instead, so nothing is lost while a dependency is down.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Mapping

import faust
from cassandra import DriverException, RequestExecutionException
from cassandra.cluster import NoHostAvailable

from . import metrics
from .events import EventError, Event, Outgoing, decode, encode_dead_letter
from .kafka import DLQ, KafkaPublisher, PublishError
from .settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Event, Mapping[str, bytes]], Awaitable[list[Outgoing]]]
INFRASTRUCTURE_ERRORS = (PublishError, NoHostAvailable, RequestExecutionException, DriverException, ConnectionError)
CONSUMER_FETCH_BYTES = 4 * 1024 * 1024  # a larger single record is still returned whole (KIP-74)


def build_app(settings: Settings, stage: str) -> faust.App:
    datadir = settings.state_dir / "workers" / settings.group(stage)
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group(stage),
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,  # `thumbs topics` owns partitions and configs
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=CONSUMER_FETCH_BYTES,
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        # A killed worker's partitions move to the survivors after this long (Faust's default is 60 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )


class StageRunner:
    def __init__(
        self, stage: str, settings: Settings, publisher: KafkaPublisher, handler: Handler, *, with_images: bool = True
    ) -> None:
        self.stage = stage
        self._with_images = with_images
        self._settings = settings
        self._publisher = publisher
        self._handler = handler

    async def handle(self, message: faust.types.tuples.Message) -> None:
        """Handles one Kafka record to completion; returns only when it is safe to commit past it."""
        started = time.perf_counter()
        topic = message.topic
        metrics.EVENTS_IN.labels(self.stage, topic).inc()
        headers = _headers(message.headers)
        try:
            event = decode(message.value, with_image=self._with_images)
        except EventError as exc:
            await self._dead_letter(message, str(exc))
            return
        for attempt in range(1, 1_000_000):
            try:
                outputs = await self._handler(event, dict(headers))
                await asyncio.gather(*(self._publisher.publish_event(o.event, o.headers, topic=o.topic) for o in outputs))
                break
            except EventError as exc:  # valid JSON, wrong place (e.g. a completed event on the requested topic)
                await self._dead_letter(message, str(exc))
                return
            except INFRASTRUCTURE_ERRORS as exc:
                metrics.INFRA_RETRIES.labels(self.stage).inc()
                log.warning("%s: %s on %s@%s, retrying: %s", self.stage, type(exc).__name__, topic, message.offset, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            except Exception as exc:  # a bug met by one record must not stop the stage: park the record
                log.exception("%s: unexpected error on %s@%s", self.stage, topic, message.offset)
                await self._dead_letter(message, f"unexpected {type(exc).__name__}: {exc}")
                return
        metrics.count_outputs(self.stage, outputs)
        metrics.STAGE_SECONDS.labels(self.stage).observe(time.perf_counter() - started)

    async def _dead_letter(self, message: faust.types.tuples.Message, reason: str) -> None:
        log.warning("%s: dead-lettering %s[%s]@%s: %s", self.stage, message.topic, message.partition, message.offset, reason)
        record = encode_dead_letter(
            reason=reason, stage=self.stage, topic=message.topic, partition=message.partition,
            offset=message.offset, key=message.key, value=message.value, headers=_headers(message.headers),
        )
        for attempt in range(1, 1_000_000):
            try:
                await self._publisher.publish(self._settings.topic(DLQ), message.key, record, _headers(message.headers))
                break
            except PublishError as exc:
                log.warning("%s: dead-letter publish failed, retrying: %s", self.stage, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        metrics.DEAD_LETTERS.labels(self.stage, message.topic).inc()


def _headers(raw: object) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, Mapping) else raw
    return [(str(k), v if isinstance(v, bytes) else (v or b"")) for k, v in items]  # type: ignore[union-attr]


def attach(app: faust.App, runner: StageRunner, topics: list[str], *, concurrency: int, name: str = "") -> None:
    """Subscribes `runner` to `topics` as a Faust agent with `concurrency` actors sharing the partitions."""
    channel = app.topic(*topics, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")

    async def agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await runner.handle(event.message)

    app.agent(channel, name=name or f"{runner.stage}-agent", concurrency=concurrency)(agent)


def run(app: faust.App) -> None:
    """Runs the worker in the foreground until SIGINT/SIGTERM."""
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
