"""Kafka edge of `thumbs lag` and of the API's backlog: the offsets the lag is computed from, read with an admin client."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from services.common.kafka import client_config
from services.common.settings import Settings
from services.replay.kafka import TIMEOUT_S, group_members

from .lag import GroupLag, LagError, Partition, group_lag


def read_lag(settings: Settings, groups: Mapping[str, Sequence[str]]) -> list[GroupLag]:
    """Each group's lag on the topics it reads (group name -> topic names, prefixes applied), with its members."""
    admin = AdminClient(client_config(settings))
    try:
        lags = []
        for group, topics in groups.items():
            state, members = group_members(admin, group)
            lags.append(replace(position(admin, group, topics), state=state, members=members))
        return lags
    except KafkaException as exc:  # an unreachable broker or a refused request: one line, not a traceback
        raise LagError(f"Kafka: {exc.args[0] if exc.args else exc}") from None


def position(admin: AdminClient, group: str, topics: Sequence[str]) -> GroupLag:
    """The group's lag on `topics`, without describing the group: for a caller that reads it every second."""
    return group_lag(group, topics, _watermarks(admin, topics), _committed(admin, group))


def _watermarks(admin: AdminClient, topics: Sequence[str]) -> dict[Partition, tuple[int, int]]:
    """(earliest, log end) of every partition of `topics`."""
    listed = admin.list_topics(timeout=TIMEOUT_S).topics
    missing = [t for t in topics if t not in listed or listed[t].error is not None]
    if missing:
        raise LagError(f"no topic {', '.join(missing)} (is THUMBS_TOPIC_PREFIX right? `thumbs topics` creates them)")
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(listed[t].partitions)]
    # OffsetSpec's factory methods carry no annotations.
    earliest = _offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
    log_end = _offsets(admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
    return {at: (earliest[at], log_end[at]) for at in log_end}


def _offsets(admin: AdminClient, partitions: Sequence[TopicPartition], spec: OffsetSpec) -> dict[Partition, int]:
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=TIMEOUT_S)
    return {(tp.topic, tp.partition): future.result(TIMEOUT_S).offset for tp, future in futures.items()}


def _committed(admin: AdminClient, group: str) -> dict[Partition, int]:
    """Every offset the group has committed (none for a group that never formed)."""
    request = ConsumerGroupTopicPartitions(group)  # the API takes one group per request
    listed = admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group].result(TIMEOUT_S)
    return {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions or ()}
