"""Kafka edge of the replay commands: bounded reads, acknowledged re-publishing, consumer-group offsets."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from services.common.kafka import KafkaPublisher, client_config, record_of
from services.common.model import Record
from services.common.settings import Settings

from .core import ReplayError, Resend, RewindTarget, epoch_ms, target_offset
from .progress import Progress

TIMEOUT_S = 15.0
IDLE_POLLS = 10  # one-second polls without a record before a read gives up on the partitions still open
IN_FLIGHT = 500  # records awaiting acknowledgement before the reader waits


@dataclass
class BoundedRead:
    """Records of one topic from a start time up to the high-water marks seen when the read began.

    Records produced after that (a republish writing to the topic it reads, say) are never read,
    so the loop ends. `stalled` lists partitions given up on after IDLE_POLLS empty polls.
    """

    settings: Settings
    topic: str
    since_ms: int | None = None
    total: int = 0
    stalled: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._consumer = Consumer({
            **client_config(self.settings),
            # Assigned partitions and no commits: this id never becomes a consumer group on the broker.
            "group.id": f"{self.settings.topic_prefix}thumbs-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
        })
        self._plan = self._bounds()
        self.total = sum(end - start for start, end in self._plan.values())

    def _bounds(self) -> dict[int, tuple[int, int]]:
        partitions = partitions_of(self._consumer, self.topic)
        ends = {p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=TIMEOUT_S) for p in partitions}
        starts = {p: ends[p][0] for p in partitions}
        if self.since_ms is not None:
            asked = [TopicPartition(self.topic, p, self.since_ms) for p in partitions]
            for tp in self._consumer.offsets_for_times(asked, timeout=TIMEOUT_S):
                starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition][1]
        return {p: (max(starts[p], ends[p][0]), ends[p][1]) for p in partitions if starts[p] < ends[p][1]}

    def __iter__(self) -> Iterator[Record]:
        open_ = {p: end for p, (_start, end) in self._plan.items()}
        self._consumer.assign([TopicPartition(self.topic, p, start) for p, (start, _end) in self._plan.items()])
        idle = 0
        try:
            while open_ and idle < IDLE_POLLS:
                batch = self._consumer.consume(500, 1.0)
                idle = 0 if batch else idle + 1
                for message in batch:
                    if message.error() is not None:
                        raise ReplayError(f"reading {self.topic}: {message.error()}")
                    record = record_of(message)
                    if record.offset < open_.get(record.partition, -1):
                        yield record
                self._close_finished(open_)
            self.stalled = sorted(open_)
        finally:
            self._consumer.close()

    def close(self) -> None:
        """Ends a read stopped early (by a --limit) now rather than whenever its iterator is collected."""
        self._consumer.close()

    def _close_finished(self, open_: dict[int, int]) -> None:
        """Done with a partition once its position reaches the start high-water mark (gaps included)."""
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in open_])
        finished = [tp for tp in positions if tp.offset >= open_[tp.partition]]
        for tp in finished:
            del open_[tp.partition]
        if finished:
            self._consumer.pause(finished)


def partitions_of(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ReplayError(f"no topic {topic} (is the topic prefix right?)")
    return sorted(metadata.partitions)


def read_one(settings: Settings, topic: str, partition: int | None, offset: int) -> Record:
    """The record at `offset` of a partition; `partition` None means the topic's only one."""
    consumer = Consumer({
        **client_config(settings), "group.id": f"{settings.topic_prefix}thumbs-dlq-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
    })
    try:
        partitions = partitions_of(consumer, topic)
        if partition is None and len(partitions) > 1:
            raise ReplayError(f"{topic} has {len(partitions)} partitions: give PARTITION:OFFSET, as `thumbs dlq list` prints it")
        partition = partitions[0] if partition is None else partition
        if partition not in partitions:
            raise ReplayError(f"{topic} has no partition {partition} (it has 0 to {len(partitions) - 1})")
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT_S)
        if not low <= offset < high:
            holds = f"offsets {low} to {high - 1}" if high > low else "no records"
            raise ReplayError(f"{topic}[{partition}] holds {holds}, not offset {offset}")
        consumer.assign([TopicPartition(topic, partition, offset)])
        for _ in range(int(TIMEOUT_S)):
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error() is not None:
                raise ReplayError(f"reading {topic}[{partition}]: {message.error()}")
            record = record_of(message)
            if record.offset != offset:  # a transaction marker sits there: no record of ours
                raise ReplayError(f"{topic}[{partition}] has no record at offset {offset} (the next is at {record.offset})")
            return record
        raise ReplayError(f"{topic}[{partition}]@{offset} not read within {TIMEOUT_S:.0f} s")
    finally:
        consumer.close()


async def publish_all(settings: Settings, resends: Iterable[Resend], progress: Progress) -> None:
    """Produces every record (acks=all) and returns once all are acknowledged; raises on the first failure."""
    publisher = KafkaPublisher(settings)
    pending: set[asyncio.Task[None]] = set()
    try:
        for resend in resends:
            progress.selected += 1
            pending.add(asyncio.create_task(publisher.publish(resend.topic, resend.key, resend.value, resend.headers)))
            if len(pending) >= IN_FLIGHT:
                pending = await _settle(pending, progress, asyncio.FIRST_COMPLETED)
            progress.tick()
        while pending:
            pending = await _settle(pending, progress, asyncio.ALL_COMPLETED)
            progress.tick()
    finally:
        for task in pending:
            task.cancel()
        publisher.close()


async def _settle(pending: set[asyncio.Task[None]], progress: Progress, when: str) -> set[asyncio.Task[None]]:
    done, rest = await asyncio.wait(pending, timeout=1.0, return_when=when)
    for task in done:
        task.result()  # a PublishError stops the run: the summary must not claim records Kafka refused
        progress.published += 1
    return rest


@dataclass(frozen=True)
class Move:
    partition: int
    committed: int | None
    target: int


def group_members(admin: AdminClient, group: str) -> tuple[str, int]:
    description = admin.describe_consumer_groups([group])[group].result(TIMEOUT_S)
    return description.state.name, len(description.members)


def plan_rewind(settings: Settings, group: str, topic: str, target: RewindTarget) -> list[Move]:
    """Per partition: the group's committed offset now and the one the rewind would commit."""
    consumer = Consumer({**client_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in partitions_of(consumer, topic)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=TIMEOUT_S)}
        at_time: dict[int, int] = {}
        if target.at is not None:
            asked = [TopicPartition(topic, tp.partition, epoch_ms(target.at)) for tp in partitions]
            at_time = {tp.partition: tp.offset for tp in consumer.offsets_for_times(asked, timeout=TIMEOUT_S)}
        moves = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT_S)
            now = committed[tp.partition]
            offset = target_offset(target, low, high, at_time.get(tp.partition))
            moves.append(Move(tp.partition, now if now >= 0 else None, offset))
        return moves
    finally:
        consumer.close()


def commit_rewind(settings: Settings, group: str, topic: str, moves: list[Move]) -> None:
    """Commits the offsets, re-checking first that nobody joined the group meanwhile."""
    admin = AdminClient(client_config(settings))
    refuse_if_live(admin, group)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, m.partition, m.target) for m in moves])
    try:
        admin.alter_consumer_group_offsets([request])[group].result(TIMEOUT_S)
    except KafkaException as exc:  # the broker refuses while members are live: same message either way
        raise ReplayError(f"Kafka refused to move the offsets of {group}: {exc}") from None


def refuse_if_live(admin: AdminClient, group: str) -> None:
    state, members = group_members(admin, group)
    if members or state not in (ConsumerGroupState.EMPTY.name, ConsumerGroupState.DEAD.name):
        raise ReplayError(
            f"consumer group {group} is {state} with {members} live member(s): stop every process of that "
            "stage first (offsets can only be moved while the group is empty; a member stopped less than a session "
            "timeout, 10 s, ago still counts), then run the rewind again"
        )
