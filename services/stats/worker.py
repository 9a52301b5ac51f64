"""Stats process: live statistics over the outcome topics, kept in Faust tables with their changelog in Kafka.

Two agents. `observe_records` reads thumbnail.requested, .completed and .failed (never the image-carrying topic)
in every instance of the group and turns each batch of records into one record of small observations on the
internal topic `<app id>-observations`. That topic has one partition, so one instance holds the tables:
`count_observations` adds each observation to the running totals and to its 10-second window. Any instance answers GET /stats, forwarding to
the one that holds the tables (Faust's table routing). After a crash the tables are rebuilt from their
changelog topics, and the marks in the tallies (core.py) make the re-read records count once.

Faust acknowledges a record even when an agent raises, so nothing expected raises here: undecodable records
become a metric. The unexpected crashes the whole worker (CrashingSupervisor), to be restarted, rather than
be skipped and quietly counted wrong.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from datetime import timedelta
from functools import partial
from typing import Any

import aiokafka
import faust
from faust.web import Request, Response, View
from mode import CrashingSupervisor

from services.common import health, metrics
from services.common.metrics import STATS_RECORDS
from services.common.model import COMPLETED, FAILED, REQUESTED
from services.common.settings import Settings
from services.ops.kafka import read_lag
from services.ops.lag import LagError
from services.replay.core import STAGE_TOPICS

from .core import KEPT_SECONDS, OUTCOME_MEMORY_SECONDS, WINDOW_SECONDS, count, decode_batch, encode_batch, observe, report

STAGE = "stats"
TALLY_KEY = "all"  # one key: the observations topic has one partition, so one instance holds every count
# A killed instance's partitions move after this long (Faust's default is 60 s).
SESSION_TIMEOUT_S = 10.0
# Observations travel and count in batches: one record, one totals write and one per window touched for up to
# this many pipeline records (Faust's cost is per record; statistics can wait half a second).
BATCH_RECORDS = 1000
BATCH_SECONDS = 0.5
LAG_SECONDS = 10.0  # how often the stages' consumer lag is read for GET /stats
FETCH_MIN_BYTES = 64 * 1024
log = logging.getLogger(__name__)


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | ssl.SSLContext | None:
    protocol = settings.kafka_security_protocol
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism, ssl_context=context,
        )
    return context


def _advertised_host(settings: Settings) -> str:
    """The address other instances reach this one's web views at (for forwarded GET /stats)."""
    if settings.metrics_host not in ("0.0.0.0", "::", ""):
        return settings.metrics_host
    return socket.gethostbyname(socket.gethostname())  # a pod's own IP in Kubernetes


class Member:
    """What the probes read (services.common.health.Member): a timer on the event loop and the assignment."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self.last_poll = time.monotonic()

    @property
    def joined(self) -> bool:
        # Recovered: the changelog has been read back, so the counts it serves are whole.
        tables: Any = self._app.tables  # the manager's type does not declare its recovery service
        return bool(tables.recovery.completed.is_set()) and not self._app.rebalancing


def _fetch_in_bulk() -> None:
    """Faust builds its aiokafka consumer without `fetch_min_bytes`, so a fetch returns at the first record: at a
    trickle (64 records/s) that is a fetch round trip per record, each encoding and decoding every assigned
    partition in Python — 2.6 ms of CPU per record, measured. Held until 64 KiB or Faust's 1.5 s wait, a fetch
    brings many; statistics can wait that long."""
    if not isinstance(aiokafka.AIOKafkaConsumer, partial):
        aiokafka.AIOKafkaConsumer = partial(aiokafka.AIOKafkaConsumer, fetch_min_bytes=FETCH_MIN_BYTES)


def build_app(settings: Settings) -> tuple[faust.App, Member]:
    _fetch_in_bulk()
    app_id = settings.group(STAGE)
    datadir = settings.state_dir / STAGE  # Faust wants a folder even with tables in memory
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 4,
        store="memory://",  # rebuilt from the changelog on start: an hour of 10-second windows is small
        datadir=str(datadir),  # not its default under the working directory, which may be read-only
        topic_replication_factor=settings.topic_replication_factor,
        web_host=settings.metrics_host,
        web_port=settings.stats_port,
        canonical_url=f"http://{_advertised_host(settings)}:{settings.stats_port}",
        web_enabled=True,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.instance or None,  # static membership, as the other stages
        producer_acks=-1,
    )
    topic_configs = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    sources = app.topic(*(settings.topic(name) for name in (REQUESTED, COMPLETED, FAILED)),
                        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    observations = app.topic(f"{app_id}-observations", partitions=1, internal=True, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw", config=topic_configs,
                             retention=timedelta(milliseconds=settings.topic_retention_ms))  # as long as their sources
    totals = app.Table("totals", partitions=1, extra_topic_configs=topic_configs)
    windows = app.Table("windows", partitions=1, extra_topic_configs=topic_configs).tumbling(
        WINDOW_SECONDS, expires=timedelta(seconds=KEPT_SECONDS + 5 * 60))
    tumbling = windows.table.window
    assert tumbling is not None
    window_at = tumbling.current  # the 10-second window (start, end) a timestamp falls in
    # Each task's first outcome record, remembered a while (core.py): windows of OUTCOME_MEMORY_SECONDS, the
    # current and the previous one read, older ones expired with their changelog entries.
    outcomes = app.Table("outcomes", partitions=1, extra_topic_configs=topic_configs).tumbling(
        OUTCOME_MEMORY_SECONDS, expires=timedelta(seconds=3 * OUTCOME_MEMORY_SECONDS))
    assert outcomes.table.window is not None
    memory_at = outcomes.table.window.current

    def first_outcome(task_id: str, at: float) -> str | None:
        for moment in (at, at - OUTCOME_MEMORY_SECONDS):
            record: str | None = outcomes.table.get((task_id, memory_at(moment)))
            if record is not None:
                return record
        return None

    member = Member(app)

    @app.agent(sources, supervisor_strategy=CrashingSupervisor)
    async def observe_records(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_SECONDS):  # type: ignore[attr-defined]  # not in StreamT
            batch = []
            for event in events:
                message = event.message
                headers = list(message.headers.items()) if isinstance(message.headers, dict) else list(message.headers or ())
                observation = observe(event.value, headers, message.topic, message.partition, message.offset, message.timestamp)
                if observation is None:
                    STATS_RECORDS.labels("invalid").inc()
                else:
                    batch.append(observation)
            STATS_RECORDS.labels("observed").inc(len(batch))
            if batch:
                await observations.send(value=encode_batch(batch))

    @app.agent(observations, supervisor_strategy=CrashingSupervisor)
    async def count_observations(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            batch, invalid = decode_batch(value)
            STATS_RECORDS.labels("invalid").inc(invalid)
            counted = count(totals.get(TALLY_KEY), lambda start: windows.table.get((TALLY_KEY, window_at(start))), batch,
                            first_outcome)
            for task_id, (at, record) in counted.first_outcomes.items():
                outcomes.table[task_id, memory_at(at)] = record
            if counted.totals is not None:
                totals[TALLY_KEY] = counted.totals
            for start, tally in counted.windows.items():
                windows.table[TALLY_KEY, window_at(start)] = tally
            STATS_RECORDS.labels("counted").inc(counted.counted)
            STATS_RECORDS.labels("duplicate").inc(counted.duplicates)

    lags: dict[str, int] = {}

    @app.timer(LAG_SECONDS)  # type: ignore[untyped-decorator]  # faust leaves timer() untyped
    async def read_lags() -> None:
        """Each deployed stage's consumer lag, for GET /stats: the page shows it beside the counts."""
        groups = {settings.group(stage): [settings.topic(t) for t in topics] for stage, topics in STAGE_TOPICS.items()}
        try:
            found = await asyncio.to_thread(read_lag, settings, groups)
        except LagError as exc:
            log.warning("cannot read the stages' consumer lag: %s", exc)
            return
        lags.clear()  # read_lag answers in the order asked; a group never committed and without members is not deployed
        lags.update({stage: group.total for stage, group in zip(STAGE_TOPICS, found, strict=True)
                     if group.members or any(p.committed is not None for p in group.partitions)})

    @app.timer(1.0)  # type: ignore[untyped-decorator]  # faust leaves timer() untyped
    async def tick() -> None:
        member.last_poll = time.monotonic()  # the probes' sign that the event loop turns

    @app.page("/stats")
    class Stats(View):
        @app.table_route(table=totals, exact_key=TALLY_KEY)  # type: ignore[arg-type]  # typed for View, not subclasses
        async def get(self, request: Request) -> Response:
            if not member.joined:
                return self.json({"error": {"code": "STATS_RECOVERING", "message": "statistics are being restored"}},
                                 status=503)
            minutes = request.query.get("minutes", "")
            span = int(minutes) * 60 if minutes.isdigit() and 0 < int(minutes) * 60 <= KEPT_SECONDS else KEPT_SECONDS
            now = time.time()
            ranges = {window_at(now - WINDOW_SECONDS * n) for n in range(span // WINDOW_SECONDS)}
            kept: list[tuple[float, Any]] = []
            for window_range in ranges:
                tally = windows.table.get((TALLY_KEY, window_range))
                if tally is not None:
                    kept.append((window_range[0], tally))
            return self.json(report(totals.get(TALLY_KEY), kept, lags))

    return app, member


def main(settings: Settings) -> int:
    app, member = build_app(settings)
    metrics.identify(STAGE, settings.renderer_version)
    probes = health.Health([member])
    metrics.STAGE_READY.labels(STAGE).set_function(lambda: float(probes.ready().ok))
    server = health.serve(settings.metrics_host, settings.stats_metrics_port, probes)
    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
