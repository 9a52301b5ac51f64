"""`thumbs topics`: create the pipeline topics, and report (or, asked to, apply) how existing ones differ."""
from __future__ import annotations

import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic

from .kafka import client_config
from .settings import Settings
from .topic_plan import ConfigChange, PartitionGrowth, TopicSpec, TopicsReport, desired_topics, plan_topics, report_of


def ensure_topics(settings: Settings, *, apply: bool = False, dry_run: bool = False,
                  timeout: float = 30.0) -> TopicsReport:
    """Creates missing pipeline topics (unless dry_run) and reports how existing ones differ from the settings.

    Existing topics are changed only with apply: configs set incrementally, partitions grown. A smaller
    partition count or another replication factor is reported, never applied.
    """
    if apply and dry_run:
        raise ValueError("apply and dry_run exclude each other")
    admin = AdminClient(client_config(settings))
    desired = desired_topics(settings)
    plan = plan_topics(desired, _actual_topics(admin, [spec.name for spec in desired], timeout))
    if not dry_run and plan.create:
        _create(admin, plan.create, timeout)
    if apply:
        _alter_configs(admin, plan.config_changes, timeout)
        _grow(admin, plan.partition_growth, timeout)
        _until_configured(admin, plan.config_changes, timeout)
    if not dry_run:
        _until_listed(admin, {spec.name: spec.partitions for spec in plan.create}
                      | {g.topic: g.wanted for g in plan.partition_growth if apply}, timeout)
    return report_of(plan, [spec.name for spec in desired], created=not dry_run, applied=apply)


def _actual_topics(admin: AdminClient, names: list[str], timeout: float) -> dict[str, TopicSpec]:
    """The named topics that exist: partitions, replication factor (replicas of partition 0), configs."""
    metadata = admin.list_topics(timeout=timeout).topics
    existing = [n for n in names if n in metadata and metadata[n].partitions]
    configs = _configs_of(admin, existing, timeout)
    return {
        name: TopicSpec(name, len(metadata[name].partitions), len(metadata[name].partitions[0].replicas), configs[name])
        for name in existing
    }


def _configs_of(admin: AdminClient, topics: Sequence[str], timeout: float) -> dict[str, dict[str, str]]:
    """Every config of each topic, defaults included, as the brokers describe them."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    described = admin.describe_configs(resources, request_timeout=timeout) if resources else {}
    return {r.name: {k: e.value for k, e in f.result(timeout).items()} for r, f in described.items()}


def _create(admin: AdminClient, specs: Sequence[TopicSpec], timeout: float) -> None:
    topics = [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.configs)) for s in specs]
    for future in admin.create_topics(topics, request_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process raced us: fine
                raise


def _alter_configs(admin: AdminClient, changes: Sequence[ConfigChange], timeout: float) -> None:
    """Incremental SET: configs not named here keep whatever they have."""
    by_topic: dict[str, list[ConfigEntry]] = {}
    for change in changes:
        entry = ConfigEntry(change.key, change.wanted, incremental_operation=AlterConfigOpType.SET)
        by_topic.setdefault(change.topic, []).append(entry)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=e) for t, e in by_topic.items()]
    for future in (admin.incremental_alter_configs(resources, request_timeout=timeout).values() if resources else []):
        future.result(timeout)


def _until_configured(admin: AdminClient, changes: Sequence[ConfigChange], timeout: float) -> None:
    """Altered configs reach describe_configs a moment later; a run right after this one must see them."""
    deadline = time.monotonic() + timeout
    topics = sorted({c.topic for c in changes})
    while topics and time.monotonic() < deadline:
        configs = _configs_of(admin, topics, timeout)
        if all(configs[c.topic].get(c.key) == c.wanted for c in changes):
            return
        time.sleep(0.1)


def _grow(admin: AdminClient, growth: Sequence[PartitionGrowth], timeout: float) -> None:
    wanted = [NewPartitions(g.topic, g.wanted) for g in growth]
    for future in (admin.create_partitions(wanted, request_timeout=timeout).values() if wanted else []):
        future.result(timeout)


def _until_listed(admin: AdminClient, partitions: dict[str, int], timeout: float) -> None:
    """Created topics and partitions reach the metadata a moment after the admin call returns."""
    deadline = time.monotonic() + timeout
    while partitions and time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=timeout).topics
        if all(n in metadata and len(metadata[n].partitions) >= count for n, count in partitions.items()):
            return
        time.sleep(0.1)
