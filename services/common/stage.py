"""The thin Kafka edge every stage shares: consume, decode, call the core, produce, then commit past it.

At-least-once: an offset is committed only once every record before it has been handled, and a record
counts as handled only when every output is acknowledged by Kafka (and Cassandra writes are done).
Records that cannot be handled go to the dead-letter topic; Kafka or Cassandra outages stall and retry
the record instead, so nothing is lost while a dependency is down.

The consumer is confluent-kafka's (librdkafka parses records in C and bounds read-ahead in bytes): records
are handled concurrently as asyncio tasks, up to a limit per subscription.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import uvloop
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from . import health, logs, metrics, tracing
from .backoff import backoff_seconds
from .events import decode, encode_dead_letter
from .kafka import PublishError, client_config, record_of
from .model import DLQ, REPLAY_HEADER, REQUESTED, REQUESTED_AT_HEADER, Event, EventError, Failed, Outgoing, Record
from .settings import Settings
from .topic_plan import MAX_MESSAGE_BYTES

T = TypeVar("T")
log = logging.getLogger(__name__)

Handler = Callable[[Event, Mapping[str, bytes]], Awaitable[list[Outgoing]]]
Sleep = Callable[[float], Awaitable[None]]
READ_AHEAD_KIB = 16 * 1024  # records fetched but not yet handed to a handler (each may hold a whole image)
COMMIT_INTERVAL_S = 1.0
LOOP_TICK_S = 1.0  # the poll loop comes round at least this often, even with every slot busy (liveness)
STATS_INTERVAL_MS = 5_000  # librdkafka statistics: consumer lag per partition
SHUTDOWN_GRACE_S = 10.0
RETRY_BASE_S = 0.2  # first wait while Kafka or Cassandra is unreachable; doubles up to the cap
RETRY_CAP_S = 5.0


class Publisher(Protocol):
    """What the edge needs of Kafka: awaitable, acknowledged produces (KafkaPublisher in production)."""

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None) -> None: ...

    async def publish_event(self, event: Event, headers: Sequence[tuple[str, bytes]] | None = None, *, topic: str | None = None) -> None: ...


# What the record being handled holds until its outputs are published or it is parked (a download's memory).
_held: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar("thumbs_held", default=None)


def hold_until_handled(release: Callable[[], None]) -> bool:
    """Calls `release` once the record being handled is done with; False outside a record (the caller releases)."""
    held = _held.get()
    if held is None:
        return False
    held.append(release)
    return True


class StageRunner:
    """Handles one record to completion: decode, call the core, publish its outputs.

    A record's own problems (undecodable, invalid, or an error raised by the core) send it to the dead-letter
    topic. Errors of the types in `transient` (Kafka or Cassandra unreachable) are retried without end, with
    capped backoff: an outage stalls the record, it never loses it. Anything else raised here is a fault of
    the edge and propagates: the caller must then not commit past the record (see Subscription).
    """

    def __init__(self, stage: str, settings: Settings, publisher: Publisher, handler: Handler, *,
                 transient: tuple[type[BaseException], ...] = (), sleep: Sleep = asyncio.sleep) -> None:
        self.stage = stage
        self._settings = settings
        self._publisher = publisher
        self._handler = handler
        self._transient: tuple[type[BaseException], ...] = (PublishError, *transient)
        self._sleep = sleep

    async def handle(self, message: Record) -> None:
        """Returns only when it is safe to commit past `message`."""
        replayed = any(name == REPLAY_HEADER for name, _ in message.headers)
        held: list[Callable[[], None]] = []
        token = _held.set(held)  # each record is handled in a task of its own, so in a context of its own
        try:
            await self._handle_bound(message, replayed)
        finally:
            _held.reset(token)
            for release in held:
                release()

    async def _handle_bound(self, message: Record, replayed: bool) -> None:
        with logs.bound(stage=self.stage, topic=message.topic, partition=message.partition, offset=message.offset), \
                tracing.record_span(self.stage, message.topic, message.partition, message.offset, message.headers,
                                    replayed=replayed) as span:
            await self._handle(message, span)

    async def _handle(self, message: Record, span: tracing.Span | None) -> None:
        started = time.perf_counter()
        metrics.EVENTS_IN.labels(self.stage, message.topic).inc()
        try:
            event = decode(message.value, message.headers)
        except EventError as exc:
            await self._dead_letter(message, str(exc), span)
            return
        with logs.bound(task_id=event.task_id, correlation_id=event.correlation_id, event_type=event.type):
            if span is not None:
                span.set_attribute("thumbs.task_id", event.task_id)
            await self._handle_event(event, message, span, started)

    async def _handle_event(self, event: Event, message: Record, span: tracing.Span | None, started: float) -> None:
        outputs, problem = await self._persistently(message, self._transient, lambda: self._call_core(event, message))
        if problem is not None:
            await self._dead_letter(message, problem, span)
            return
        onward = onward_headers(event, message.headers)
        # Outputs are published again on their own: calling the core again would redo its effects (and
        # answer "deduplicated" for a thumbnail it has just stored).
        await self._persistently(message, (PublishError,), lambda: asyncio.gather(
            *(self._publisher.publish_event(o.event, _merged(o.headers, onward), topic=o.topic) for o in outputs)))
        metrics.count_outputs(self.stage, outputs)
        # A failed event sent to a topic of its own (the notifier's retries) is an old failure travelling on.
        fails = [o.event.payload for o in outputs if isinstance(o.event.payload, Failed) and o.topic is None]
        for failed in fails:
            log.warning("task failed: %s: %s", failed.code, failed.message, extra={"error_code": failed.code})
        metrics.STAGE_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
        result = ",".join(o.topic or o.event.type for o in outputs) or "no output"
        tracing.outcome(span, result, failed=bool(fails))
        log.debug("handled: %s", result)  # a line per record only when asked for (THUMBS_LOG_LEVEL=DEBUG)

    async def _call_core(self, event: Event, message: Record) -> tuple[list[Outgoing], str | None]:
        """The core's outputs, or why the record must be parked; transient errors propagate to be retried."""
        try:
            return await self._handler(event, dict(message.headers)), None
        except self._transient:
            raise
        except EventError as exc:  # valid JSON, wrong place (e.g. a completed event on the requested topic)
            return [], str(exc)
        except Exception as exc:  # a bug met by one record must not stop the stage: park the record
            log.exception("%s: unexpected error on %s@%s", self.stage, message.topic, message.offset)
            return [], f"unexpected {type(exc).__name__}: {exc}"

    async def _dead_letter(self, message: Record, reason: str, span: tracing.Span | None = None) -> None:
        tracing.outcome(span, "dead_letter", failed=True, reason=reason[:200])
        log.warning("%s: dead-lettering %s[%s]@%s: %s", self.stage, message.topic, message.partition, message.offset, reason)
        record = encode_dead_letter(
            reason=reason, stage=self.stage, topic=message.topic, partition=message.partition,
            offset=message.offset, key=message.key, value=message.value, headers=list(message.headers),
        )
        await self._persistently(message, (PublishError,),
                                 lambda: self._publisher.publish(self._settings.topic(DLQ), message.key, record, message.headers))
        metrics.DEAD_LETTERS.labels(self.stage, message.topic).inc()

    async def _persistently(self, message: Record, transient: tuple[type[BaseException], ...],
                            call: Callable[[], Awaitable[T]]) -> T:
        """`call`'s result, calling it again with backoff for as long as it raises one of `transient`. The first
        attempt runs bare: tenacity's machinery cost most of a record's edge time (bench/tracing_overhead.py) and
        is wanted only once something has failed."""
        try:
            return await call()
        except transient as error:
            self._retry_noted(message, 1, error)
            await self._sleep(self._backoff(1))

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self._retry_noted(message, state.attempt_number + 1, error)

        retrying = AsyncRetrying(retry=retry_if_exception_type(transient), stop=stop_never, sleep=self._sleep,
                                 wait=lambda state: self._backoff(state.attempt_number + 1),
                                 before_sleep=before_sleep, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: the retries never stop but by returning or raising")

    def _retry_noted(self, message: Record, attempt: int, error: BaseException | None) -> None:
        metrics.INFRA_RETRIES.labels(self.stage).inc()
        log.warning("%s: %s on %s[%s]@%s (attempt %d), retrying: %s", self.stage, type(error).__name__,
                    message.topic, message.partition, message.offset, attempt, error)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return backoff_seconds(attempt, base=RETRY_BASE_S, cap=RETRY_CAP_S, jitter=random.random())


Headers = Sequence[tuple[str, bytes]]
CARRIED = frozenset({REQUESTED_AT_HEADER, REPLAY_HEADER})


def onward_headers(event: Event, incoming: Headers) -> list[tuple[str, bytes]]:
    """What every output of a record carries on from it: the request's time (stamped at the first stage from
    the requested event, which any producer must date), the replay mark, and the trace context."""
    kept = [(name, value) for name, value in incoming if name in CARRIED]
    if event.type == REQUESTED and not any(name == REQUESTED_AT_HEADER for name, _ in kept):
        kept.append((REQUESTED_AT_HEADER, str(event.occurred_at_micros // 1000).encode()))
    return kept + tracing.carried(incoming)


def _merged(own: Headers, onward: Headers) -> list[tuple[str, bytes]]:
    """A core's own headers win over carried ones of the same name."""
    names = {name for name, _ in own}
    return [*own, *((name, value) for name, value in onward if name not in names)]


class Offsets:
    """Where a partition may be committed: just before its oldest record still in flight.

    Records finish out of order; committing past an unfinished one would lose it in a crash. A held record
    (its handling failed in the edge) is never finished: this member never commits past it.
    Shared by the event loop (start/finish) and the consumer thread (rebalance callbacks).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._in_flight: dict[tuple[str, int], set[int]] = {}
        self._held: dict[tuple[str, int], set[int]] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def start(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._in_flight.setdefault((topic, partition), set()).add(offset)
            self._next[(topic, partition)] = max(self._next.get((topic, partition), 0), offset + 1)

    def finish(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._in_flight.get((topic, partition), set()).discard(offset)
            self._lock.notify_all()

    def hold(self, topic: str, partition: int, offset: int) -> None:
        """Pins the partition's position at `offset` for good; nobody needs to wait for it any more."""
        with self._lock:
            self._in_flight.get((topic, partition), set()).discard(offset)
            self._held.setdefault((topic, partition), set()).add(offset)
            self._lock.notify_all()

    def wait_finished(self, partitions: Sequence[tuple[str, int]], timeout: float) -> bool:
        """Blocks (on the consumer thread) until no record of `partitions` is in flight, or `timeout` passes."""
        with self._lock:
            return self._lock.wait_for(lambda: not any(self._in_flight.get(tp) for tp in partitions), timeout)

    def committable(self, partitions: Sequence[tuple[str, int]] | None = None) -> list[TopicPartition]:
        """Positions that moved since the last call, for the given partitions (default: all)."""
        with self._lock:
            out = []
            for tp in list(self._next) if partitions is None else partitions:
                if tp not in self._next:
                    continue
                pending = self._in_flight.get(tp, set()) | self._held.get(tp, set())
                position = min(pending) if pending else self._next[tp]
                if self._committed.get(tp) != position:
                    self._committed[tp] = position
                    out.append(TopicPartition(tp[0], tp[1], position))
            return out

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        """A revoked partition's late finishes must not be committed by this member any more."""
        with self._lock:
            for tp in partitions:
                self._in_flight.pop(tp, None)
                self._held.pop(tp, None)
                self._next.pop(tp, None)
                self._committed.pop(tp, None)


class KafkaConsumer(Protocol):
    """The part of confluent_kafka.Consumer the edge uses (a fake in unit tests)."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> list[Message]: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...

    def close(self) -> None: ...


class Subscription:
    """One consumer-group member feeding `runner` from `topics`, at most `concurrency` records at a time and, with
    `max_bytes`, records of at most that many bytes of values (plus one record) in flight.

    Crash-only: when handling a record fails in the edge itself, the member never commits past that record
    and stops the stage (`failed` is then true); restarted, it is handed the record again.
    """

    def __init__(self, settings: Settings, runner: StageRunner, topics: list[str], *, concurrency: int,
                 max_bytes: int = 0, consumer: KafkaConsumer | None = None) -> None:
        self.runner = runner
        self.failed = False
        self.joined = False  # holds a group assignment (readiness)
        self.assigned_at = time.time()  # wall clock of the last time partitions were added to this member
        self.last_poll = time.monotonic()  # the loop came round (liveness)
        self.topics = topics
        self._concurrency = concurrency
        self._max_bytes = max_bytes
        self._bytes_in_flight = 0
        self._offsets = Offsets()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        # confluent-kafka calls block: they run on this member's own thread, one at a time.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{runner.stage}-consumer")
        self._consumer = consumer or kafka_consumer(settings, runner.stage, topics)
        self._in_flight = metrics.IN_FLIGHT.labels(runner.stage)

    async def run(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        loop = asyncio.get_running_loop()
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        last_commit = time.monotonic()
        try:
            while not stopping.is_set():
                self.last_poll = time.monotonic()
                free = self._concurrency - len(self._tasks)
                room = self._max_bytes - self._bytes_in_flight if self._max_bytes else None
                if free <= 0 or (room is not None and room <= 0):
                    self._slot_freed.clear()
                    await _first(self._slot_freed.wait(), stopping.wait(), asyncio.sleep(LOOP_TICK_S))
                    continue
                for message in await loop.run_in_executor(self._thread, self._take, free, room):
                    self._dispatch(message)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    await loop.run_in_executor(self._thread, self._commit, None)
                    last_commit = time.monotonic()
        finally:
            await self._drain(loop)

    def _take(self, most: int, room: int | None = None) -> list[Message]:
        """Waits briefly for one record, then takes what else is already fetched without waiting:
        consume(n, timeout) alone would hold a lone record until n arrive or the timeout passes.
        With `room`, stops once the values taken reach that many bytes (one record always fits)."""
        first = self._consumer.consume(1, 0.1)
        if not first or most <= 1:
            return first
        if room is None:
            return first + self._consumer.consume(most - 1, 0)
        taken, size = first, _size(first[0])
        while len(taken) < most and size < room:
            more = self._consumer.consume(1, 0)
            if not more:
                break
            taken += more
            size += _size(more[0])
        return taken

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consumer error: %s", self.runner.stage, error)
            return
        record = record_of(message)
        self._offsets.start(record.topic, record.partition, record.offset)
        self._bytes_in_flight += _size(message)
        task = asyncio.get_running_loop().create_task(self._handle(record))
        self._tasks.add(task)
        self._in_flight.inc()

    async def _handle(self, record: Record) -> None:
        try:
            await self.runner.handle(record)
        except asyncio.CancelledError:
            raise  # stopped mid-record: it stays uncommitted and is handled again after the restart
        except BaseException:
            # Not the record's fault (those become dead letters): the edge itself broke. Guessing on would
            # commit a record with no output, so stop and let the supervisor restart the stage.
            log.critical("%s: edge failure on %s[%s]@%s; stopping without committing past it", self.runner.stage,
                         record.topic, record.partition, record.offset, exc_info=True)
            self._offsets.hold(record.topic, record.partition, record.offset)
            self.failed = True
            self._stopping.set()
        else:
            self._offsets.finish(record.topic, record.partition, record.offset)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._bytes_in_flight -= len(record.value or b"")
            self._in_flight.dec()
            self._slot_freed.set()

    def _commit(self, partitions: Sequence[tuple[str, int]] | None) -> None:
        offsets = self._offsets.committable(partitions)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. mid-rebalance: the records are simply handled again
            log.warning("%s: commit failed: %s", self.runner.stage, exc)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True  # called on every join, with an empty list when there is nothing to take
        if partitions:
            self.assigned_at = time.time()
            log.info("%s: assigned %s", self.runner.stage, _names(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs on the consumer thread inside consume(): let in-flight records finish (their outputs would
        otherwise be produced twice, once here and once by the next owner), commit, let the partitions go."""
        revoked = [(p.topic, p.partition) for p in partitions]
        log.info("%s: revoked %s", self.runner.stage, _names(partitions))
        if not self._offsets.wait_finished(revoked, SHUTDOWN_GRACE_S):
            log.warning("%s: records still in flight on revoked partitions; they may be handled again", self.runner.stage)
        self._commit(revoked)
        self._offsets.forget(revoked)
        _forget_lag(self.runner.stage, revoked)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The session expired (e.g. the broker was down): the partitions may be someone else's already, so
        there is nothing to wait for or commit; records still in flight may be handled twice."""
        log.warning("%s: lost %s", self.runner.stage, _names(partitions))
        self.joined = False
        lost = [(p.topic, p.partition) for p in partitions]
        self._offsets.forget(lost)
        _forget_lag(self.runner.stage, lost)

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Finish what is in flight (bounded), commit it, and leave the group so others take over at once."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_GRACE_S)
        await loop.run_in_executor(self._thread, self._commit, None)
        await loop.run_in_executor(self._thread, self._consumer.close)
        self._thread.shutdown(wait=False)


def kafka_consumer(settings: Settings, stage: str, topics: list[str]) -> Consumer:
    static = {}
    if settings.instance:
        # Static membership: an instance restarted within the session timeout gets its partitions back
        # without a rebalance of the whole group (rolling restarts, a broker's leadership moving).
        static = {"group.instance.id": f"{settings.instance}.{'+'.join(topics)}"}
    return Consumer({
        **client_config(settings),
        **static,
        "group.id": settings.group(stage),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",  # a joining member moves only what it takes
        # A killed member's partitions move to the survivors after this long.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "queued.max.messages.kbytes": READ_AHEAD_KIB,
        "fetch.max.bytes": 8 * 1024 * 1024,  # a larger single record is still returned whole (KIP-74)
        "receive.message.max.bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
        "fetch.wait.max.ms": 100,
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": lambda stats: record_lag(stage, stats),
    })


def _size(message: Message) -> int:
    return len(message.value() or b"")


def record_lag(stage: str, stats_json: str) -> None:
    """Sets thumbs_consumer_lag from a librdkafka statistics report: the partitions this member fetches, with
    lag = log end (last stable offset) − the group's committed offset; -1 (not known yet) is left out."""
    try:
        stats = json.loads(stats_json)
    except ValueError:
        return
    for topic, topic_stats in stats.get("topics", {}).items():
        for number, partition in topic_stats.get("partitions", {}).items():
            lag = partition.get("consumer_lag", -1)
            if number != "-1" and partition.get("fetch_state") == "active" and lag >= 0:
                metrics.CONSUMER_LAG.labels(stage, topic, number).set(lag)


def _forget_lag(stage: str, partitions: Sequence[tuple[str, int]]) -> None:
    """A partition that moved to another member is reported by that member from now on."""
    for topic, partition in partitions:
        try:
            metrics.CONSUMER_LAG.remove(stage, topic, str(partition))
        except KeyError:
            pass


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


async def _first(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


Close = Callable[[], Awaitable[None] | None]


@dataclass
class Built:
    """What a stage's composition root made: its consumer-group members, how to close what it opened, in the
    order to close it (after the members have drained and left the group), and the readiness checks of the
    dependencies it opened."""

    subscriptions: list[Subscription]
    closers: list[Close] = field(default_factory=list)
    checks: dict[str, health.Check] = field(default_factory=dict)


def run(built: Built, settings: Settings, probe_port: int) -> int:
    """Runs the stage in the foreground until SIGINT/SIGTERM, then finishes in-flight records and closes;
    /metrics, /livez and /readyz are served on `probe_port` meanwhile.

    Returns the process exit status: 0 after a requested stop, 1 when the edge failed (restart it).
    """
    stage = built.subscriptions[0].runner.stage
    probes = health.Health(built.subscriptions, built.checks)
    metrics.identify(stage, settings.renderer_version)
    metrics.start_series(stage, [topic for member in built.subscriptions for topic in member.topics])
    tracing.configure(stage)
    metrics.STAGE_READY.labels(stage).set_function(lambda: float(probes.ready().ok))
    server = health.serve(settings.metrics_host, probe_port, probes)
    try:
        return uvloop.run(serve(built.subscriptions, on_stop=built.closers))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


async def serve(subscriptions: list[Subscription], *, on_stop: Sequence[Close] = ()) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await asyncio.gather(*(s.run(stopping) for s in subscriptions))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for close in on_stop:
            done = close()
            if inspect.isawaitable(done):
                await done
    return 1 if any(s.failed for s in subscriptions) else 0
