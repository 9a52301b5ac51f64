"""Projector process: a consumer of every pipeline topic, materialising task rows in Cassandra."""
from __future__ import annotations

from typing import Mapping

from services.common import metrics, stage
from services.common.cassandra import TRANSIENT_ERRORS, connect
from services.common.kafka import KafkaPublisher
from services.common.model import COMPLETED, FAILED, FETCHED, REQUESTED, Event, Outgoing
from services.common.repositories import TaskRepository
from services.common.settings import Settings

from .core import project

STAGE = "projector"


def build_projector(settings: Settings, *, publisher: KafkaPublisher | None = None) -> stage.Subscription:
    tasks = TaskRepository(connect(settings), settings.keyspace, settings.task_ttl_seconds)

    async def handle(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        await tasks.apply(project(event))
        return []

    # The publisher only carries dead letters here.
    runner = stage.StageRunner(STAGE, settings, publisher or KafkaPublisher(settings), handle, transient=TRANSIENT_ERRORS)
    topics = [settings.topic(t) for t in (REQUESTED, FETCHED, COMPLETED, FAILED)]
    return stage.Subscription(settings, runner, topics, concurrency=16)


def main(settings: Settings) -> int:
    metrics.serve(settings.metrics_host, settings.projector_metrics_port)
    return stage.run([build_projector(settings)])
