"""Projector process: a consumer of every pipeline topic, materialising task rows in Cassandra."""
from __future__ import annotations

from collections.abc import Mapping

from services.common import metrics, stage
from services.common.cassandra import TRANSIENT_ERRORS, connect
from services.common.kafka import KafkaPublisher
from services.common.model import COMPLETED, FAILED, HASHED, REQUESTED, Event, Outgoing
from services.common.ports import Tasks
from services.common.repositories import TaskRepository
from services.common.settings import Settings

from .core import project

STAGE = "projector"


def build_projector(settings: Settings, *, publisher: stage.Publisher | None = None, tasks: Tasks | None = None) -> stage.Built:
    """The projector with real adapters for every port not given; it closes only what it opened."""
    closers: list[stage.Close] = []
    if publisher is None:  # it only carries dead letters here
        publisher = kafka = KafkaPublisher(settings)
        closers.append(kafka.close)
    if tasks is None:
        session = connect(settings)
        tasks = TaskRepository(session, settings.keyspace, settings.task_ttl_seconds)
        closers.append(session.cluster.shutdown)

    async def handle(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        await tasks.apply(project(event))
        return []

    runner = stage.StageRunner(STAGE, settings, publisher, handle, transient=TRANSIENT_ERRORS)
    topics = [settings.topic(t) for t in (REQUESTED, HASHED, COMPLETED, FAILED)]
    return stage.Built([stage.Subscription(settings, runner, topics, concurrency=16)], closers)


def main(settings: Settings) -> int:
    metrics.serve(settings.metrics_host, settings.projector_metrics_port)
    return stage.run(build_projector(settings))
