"""Projector process: a consumer of every pipeline topic, materialising task rows in Cassandra."""
from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial

from services.common import metrics, stage
from services.common.cassandra import TRANSIENT_ERRORS, connect, hosts_up
from services.common.health import Check
from services.common.kafka import KafkaPublisher
from services.common.model import COMPLETED, FAILED, HASHED, REPLAY_HEADER, REQUESTED, REQUESTED_AT_HEADER, Completed, Event, Failed, Outgoing
from services.common.ports import Tasks
from services.common.repositories import TaskRepository
from services.common.settings import Settings

from .core import project, written_by_api

STAGE = "projector"


def build_projector(settings: Settings, *, publisher: stage.Publisher | None = None, tasks: Tasks | None = None) -> stage.Built:
    """The projector with real adapters for every port not given; it closes only what it opened."""
    closers: list[stage.Close] = []
    checks: dict[str, Check] = {}
    if publisher is None:  # it only carries dead letters here
        publisher = kafka = KafkaPublisher(settings)
        closers.append(kafka.close)
    if tasks is None:
        session = connect(settings)
        tasks = TaskRepository(session, settings.keyspace, settings.task_ttl_seconds)
        closers.append(session.cluster.shutdown)
        checks["cassandra"] = partial(hosts_up, session)

    async def handle(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        if not written_by_api(event, headers, time.time()):
            await tasks.apply(project(event))
        observe_latency(event, headers)
        return []

    runner = stage.StageRunner(STAGE, settings, publisher, handle, transient=TRANSIENT_ERRORS)
    topics = [settings.topic(t) for t in (REQUESTED, HASHED, COMPLETED, FAILED)]
    return stage.Built([stage.Subscription(settings, runner, topics, concurrency=16)], closers, checks)


def observe_latency(event: Event, headers: Mapping[str, bytes]) -> None:
    """Request to outcome, for live outcomes only: a replayed one would count its first run's age again."""
    if not isinstance(event.payload, Completed | Failed) or REPLAY_HEADER in headers:
        return
    try:
        requested_ms = int(headers[REQUESTED_AT_HEADER])
    except (KeyError, ValueError):
        return  # produced by something that does not carry the header (an older release)
    seconds = event.occurred_at_micros / 1e6 - requested_ms / 1e3
    metrics.TASK_SECONDS.labels("SUCCESS" if isinstance(event.payload, Completed) else "FAILURE").observe(max(0.0, seconds))


def main(settings: Settings) -> int:
    return stage.run(build_projector(settings), settings, settings.projector_metrics_port)
