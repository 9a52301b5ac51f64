"""Cassandra edge: connecting, the idempotent schema migration, and awaiting driver futures."""
from __future__ import annotations

import asyncio
from collections import namedtuple
from functools import lru_cache
from typing import Any, Sequence

from cassandra import ConsistencyLevel, DriverException, RequestExecutionException
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import ExponentialReconnectionPolicy, RoundRobinPolicy

from .settings import Settings, SettingsError

# Cassandra unreachable, overloaded or timing out: a stage waits these out and retries the record.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (NoHostAvailable, RequestExecutionException, DriverException, ConnectionError)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
        task_id uuid PRIMARY KEY,
        status text,
        source_url text,
        rendition text,
        source_sha256 text,
        rendition_key text,
        content_type text,
        width int,
        height int,
        size_bytes int,
        deduplicated boolean,
        error_code text,
        error_message text,
        created_at timestamp,
        fetched_at timestamp,
        completed_at timestamp,
        updated_at timestamp)""",
    # One row per distinct (content, rendition): the primary key itself makes duplicates impossible.
    """CREATE TABLE IF NOT EXISTS thumbnails (
        source_sha256 text,
        rendition_key text,
        data blob,
        content_type text,
        width int,
        height int,
        created_at timestamp,
        PRIMARY KEY ((source_sha256, rendition_key)))""",
)


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> type:
    return namedtuple("Row", columns)  # type: ignore[misc]


def cached_named_tuple_factory(columns: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """The driver's default factory builds a new namedtuple class per result; ours reuses it per column set."""
    row_type = _row_type(tuple(columns))
    return [row_type._make(row) for row in rows]


def connect(settings: Settings, *, keyspace: str | None = None, timeout: float = 10.0) -> Session:
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(),
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
        request_timeout=timeout,
        row_factory=cached_named_tuple_factory,
    )
    cluster = Cluster(
        list(settings.cassandra_hosts),
        port=settings.cassandra_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        protocol_version=5,
        # The driver's default backs off to 10 minutes; a restarted node should be used within seconds.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
    )
    return cluster.connect(keyspace)


def replication_cql(spec: str) -> str:
    """`SimpleStrategy:1` or `NetworkTopologyStrategy:dc1=3,dc2=3` → a CQL replication map."""
    strategy, _, rest = spec.partition(":")
    if strategy == "SimpleStrategy" and rest.isdigit():
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(rest)}}}"
    if strategy == "NetworkTopologyStrategy" and rest:
        pairs = [p.split("=") for p in rest.split(",")]
        if all(len(p) == 2 and p[0].isidentifier() and p[1].isdigit() for p in pairs):
            body = ", ".join(f"'{dc}': {int(rf)}" for dc, rf in pairs)
            return f"{{'class': 'NetworkTopologyStrategy', {body}}}"
    raise SettingsError(f"THUMBS_CASSANDRA_REPLICATION={spec!r}: use SimpleStrategy:<rf> or NetworkTopologyStrategy:<dc>=<rf>,...")


def migrate(settings: Settings, session: Session | None = None) -> None:
    """Creates or updates the keyspace and tables; safe to run at every start-up."""
    if not settings.keyspace.isidentifier():
        raise SettingsError(f"THUMBS_KEYSPACE={settings.keyspace!r} is not a valid identifier")
    own = session is None
    session = session or connect(settings)
    try:
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {settings.keyspace} WITH replication = "
            f"{replication_cql(settings.cassandra_replication)}"
        )
        session.execute(f"ALTER KEYSPACE {settings.keyspace} WITH replication = {replication_cql(settings.cassandra_replication)}")
        for statement in SCHEMA:
            session.execute(statement.replace("TABLE IF NOT EXISTS ", f"TABLE IF NOT EXISTS {settings.keyspace}."))
    finally:
        if own:
            session.cluster.shutdown()


async def execute(session: Session, statement: Any, params: Sequence[Any] = ()) -> list[Any]:
    """Runs a statement without blocking the event loop; returns all rows (our queries read one partition)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()
    response: ResponseFuture = session.execute_async(statement, params)

    def on_rows(rows: Any) -> None:
        loop.call_soon_threadsafe(_resolve, done, list(rows or []), None)

    def on_error(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_resolve, done, None, exc)

    response.add_callbacks(on_rows, on_error)
    return await done


def _resolve(future: asyncio.Future[list[Any]], rows: list[Any] | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(rows or [])
