"""Cassandra edge: the production client, versioned schema migrations, and awaiting driver futures."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
import uuid
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from cassandra import ConsistencyLevel, DriverException, RequestExecutionException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import named_tuple_factory

from . import metrics
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Cassandra unreachable, overloaded or timing out: a stage waits these out and retries the record.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (NoHostAvailable, RequestExecutionException, DriverException, ConnectionError)


class Migration(NamedTuple):
    version: int
    description: str
    statements: tuple[str, ...]  # CQL with a {keyspace} placeholder; each must be safe to run twice


# Append only: never edit or reorder an applied migration. The next one is version len(MIGRATIONS) + 1.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks and thumbnails tables", (
        """CREATE TABLE IF NOT EXISTS {keyspace}.tasks (
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
        """CREATE TABLE IF NOT EXISTS {keyspace}.thumbnails (
        source_sha256 text,
        rendition_key text,
        data blob,
        content_type text,
        width int,
        height int,
        created_at timestamp,
        PRIMARY KEY ((source_sha256, rendition_key)))""",
    )),
    # At RF 3, a LOCAL_QUORUM read that picked a just-killed replica otherwise stalls 2.5-5 s, until
    # gossip convicts the node; a second replica is asked once the first is 50 ms late.
    Migration(2, "speculative retry after 50 ms", (
        "ALTER TABLE {keyspace}.tasks WITH speculative_retry = '50ms'",
        "ALTER TABLE {keyspace}.thumbnails WITH speculative_retry = '50ms'",
    )),
    Migration(3, "idempotency keys, kept a day", (
        """CREATE TABLE IF NOT EXISTS {keyspace}.idempotency_keys (
        scope text,
        idempotency_key text,
        task_id uuid,
        event_id uuid,
        fingerprint text,
        claimed_at timestamp,
        PRIMARY KEY ((scope, idempotency_key))
        ) WITH default_time_to_live = 86400""",
    )),
    Migration(4, "task owner, callback URL and webhook delivery columns", (
        """ALTER TABLE {keyspace}.tasks ADD IF NOT EXISTS (owner text, callback_url text, webhook_state text,
        webhook_attempts int, webhook_last_status int, webhook_updated_at timestamp)""",
    )),
    Migration(5, "API keys and their request counts", (
        """CREATE TABLE IF NOT EXISTS {keyspace}.api_keys (
        name text PRIMARY KEY,
        secret_sha256 text,
        requests_per_minute int,
        webhook_secret text,
        created_at timestamp,
        revoked_at timestamp)""",
        # One row per API process, key and minute: each process overwrites its own count, so a retried write
        # never counts twice (counter columns would), and the rows expire once no estimate reads them.
        """CREATE TABLE IF NOT EXISTS {keyspace}.api_key_usage (
        name text,
        minute bigint,
        process text,
        requests int,
        PRIMARY KEY ((name, minute), process)
        ) WITH default_time_to_live = 180""",
    )),
    # A finished task's renditions (JSON, in request order); rows without it have one, in the flat columns.
    Migration(6, "task renditions column", (
        "ALTER TABLE {keyspace}.tasks ADD IF NOT EXISTS renditions text",
    )),
)

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (
    version int PRIMARY KEY,
    description text,
    state text,
    applied_at timestamp,
    owner text)"""

SCHEMA_PROFILE = "thumbs-schema"  # DDL and the migration claims: long timeout, LWT-aware rows
CLAIM_WAIT_SECONDS = 60.0  # how long a process waits for another one's migration before giving up
STALE_CLAIM_SECONDS = 120.0  # a claim still 'applying' this long lost its owner; another process takes over
POLL_SECONDS = 0.5
APPLYING, APPLIED = "applying", "applied"


class MigrationError(RuntimeError):
    """The migration list is malformed, or another process' claim neither finished nor went stale in time."""


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> Any:
    # A lightweight transaction's answer has the column "[applied]": read as `applied`, as the driver's factory does.
    return namedtuple("Row", [name.strip("[]") for name in columns])


def cached_named_tuple_factory(columns: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """The driver's default factory builds a new namedtuple class per result; ours reuses it per column set."""
    row_type = _row_type(tuple(columns))
    return [row_type._make(row) for row in rows]


def load_balancing(settings: Settings) -> TokenAwarePolicy:
    """Replicas of the partition first, in the local datacenter only (empty setting: the contact points' DC)."""
    return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc or None))


def ssl_context(ca_location: str) -> ssl.SSLContext:
    """TLS that accepts only nodes whose certificate the CA signed, for the address it was reached at."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name by default
    context.load_verify_locations(ca_location)
    context.check_hostname = True
    return context


def cluster_options(settings: Settings, timeout: float = 10.0) -> dict[str, Any]:
    """Keyword arguments of `Cluster` for these settings; builds no connection."""
    consistency = ConsistencyLevel.name_to_value[settings.cassandra_consistency]
    # One policy instance per profile: the driver populates each profile's policy with the hosts.
    default = ExecutionProfile(
        load_balancing_policy=load_balancing(settings), consistency_level=consistency,
        request_timeout=timeout, row_factory=cached_named_tuple_factory,
    )
    options: dict[str, Any] = {
        "contact_points": list(settings.cassandra_hosts),
        "port": settings.cassandra_port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: default, SCHEMA_PROFILE: schema_profile(settings)},
        "connect_timeout": timeout,
        "protocol_version": 5,
        # A schema change waits this long for every live node to agree before the next statement runs (the
        # driver's default is 10 s): on a busy machine a new node took longer, and a statement prepared right
        # after a CREATE TABLE then failed on the node that had not seen it yet.
        "max_schema_agreement_wait": 60,
        # The driver's default backs off to 10 minutes; a restarted node should be used within seconds.
        "reconnection_policy": ExponentialReconnectionPolicy(0.5, 5.0),
    }
    if settings.cassandra_username:
        options["auth_provider"] = PlainTextAuthProvider(settings.cassandra_username, settings.cassandra_password)
    if settings.cassandra_ssl_ca_location:
        options["ssl_context"] = ssl_context(settings.cassandra_ssl_ca_location)
    return options


def schema_profile(settings: Settings) -> ExecutionProfile:
    """DDL waits for schema agreement, so it gets a long timeout; the driver's row factory reads LWT results."""
    return ExecutionProfile(
        load_balancing_policy=load_balancing(settings),
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
        serial_consistency_level=ConsistencyLevel.SERIAL,  # claims are linearizable across every datacenter
        request_timeout=60.0,
        row_factory=named_tuple_factory,
    )


def connect(settings: Settings, *, keyspace: str | None = None, timeout: float = 10.0) -> Session:
    return Cluster(**cluster_options(settings, timeout)).connect(keyspace)


def hosts_up(session: Session) -> bool:
    """A readiness check without a round trip: the driver marks nodes down and up as it loses and regains them."""
    return any(host.is_up for host in session.cluster.metadata.all_hosts())


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


def validate(migrations: Sequence[Migration]) -> None:
    """Versions 1, 2, 3, … in order, each described, each statement in the keyspace and re-runnable."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {migration.version} is out of order: expected version {expected}")
        if not migration.description.strip() or not migration.statements:
            raise MigrationError(f"migration {migration.version} needs a description and at least one statement")
        for statement in migration.statements:
            if "{keyspace}." not in statement:
                raise MigrationError(f"migration {migration.version}: write {{keyspace}}.<table>: {statement[:60]}")
            if statement.lstrip().upper().startswith("CREATE") and "IF NOT EXISTS" not in statement.upper():
                raise MigrationError(f"migration {migration.version}: CREATE without IF NOT EXISTS is not re-runnable")


@dataclass(frozen=True)
class Claim:
    """A version's row in schema_migrations: who holds it, and since when (µs, the claim's write time)."""

    state: str
    owner: str
    since_micros: int


Step = Literal["done", "claim", "take over", "wait"]


def next_step(claim: Claim | None, now_micros: int, stale_after: float = STALE_CLAIM_SECONDS) -> Step:
    """What a process does about a version, given its row: nothing, claim it, take a dead owner's claim, or wait."""
    if claim is None:
        return "claim"
    if claim.state == APPLIED:
        return "done"
    if now_micros - claim.since_micros > stale_after * 1_000_000:
        return "take over"
    return "wait"


def migrate(settings: Settings, session: Session | None = None) -> list[int]:
    """Creates or updates the keyspace and applies each pending migration once; returns the versions it applied.

    Safe when many processes run it at once: a version is claimed with a lightweight transaction, and the
    others wait until its claimer marks it applied.
    """
    if not settings.keyspace.isidentifier():
        raise SettingsError(f"THUMBS_KEYSPACE={settings.keyspace!r} is not a valid identifier")
    validate(MIGRATIONS)
    own = session is None
    session = session or connect(settings)
    try:
        _ensure_schema_profile(session, settings)
        keyspace, replication = settings.keyspace, replication_cql(settings.cassandra_replication)
        _ddl(session, f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}")
        _ddl(session, f"ALTER KEYSPACE {keyspace} WITH replication = {replication}")  # a changed setting takes effect
        _ddl(session, MIGRATIONS_TABLE.format(keyspace=keyspace))
        ledger = _Ledger(session, keyspace, _owner_id())
        applied = [m.version for m in MIGRATIONS if ledger.apply(m)]
        log.info("keyspace %s at schema version %d; applied now: %s", keyspace, len(MIGRATIONS), applied or "none")
        return applied
    finally:
        if own:
            session.cluster.shutdown()


def _owner_id() -> str:
    # Unique per call, so threads of one process do not mistake each other's claims for their own.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ensure_schema_profile(session: Session, settings: Settings) -> None:
    """A session handed in may come from a Cluster built elsewhere, without our schema profile."""
    if SCHEMA_PROFILE not in session.cluster.profile_manager.profiles:
        session.cluster.add_execution_profile(SCHEMA_PROFILE, schema_profile(settings))


def _ddl(session: Session, statement: str) -> None:
    result = session.execute(statement, execution_profile=SCHEMA_PROFILE)
    if not result.response_future.is_schema_agreed:
        log.warning("schema not yet agreed by every live node after: %s", " ".join(statement.split())[:80])


class _Ledger:
    """schema_migrations rows, read and written with lightweight transactions (SERIAL consistency)."""

    def __init__(self, session: Session, keyspace: str, owner: str) -> None:
        self._session, self._keyspace, self._owner = session, keyspace, owner
        table = f"{keyspace}.schema_migrations"
        self._read = session.prepare(
            f"SELECT state, owner, WRITETIME(owner) AS since FROM {table} WHERE version = ?")
        self._read.consistency_level = ConsistencyLevel.SERIAL  # sees every committed claim
        self._claim = session.prepare(
            f"INSERT INTO {table} (version, description, state, owner) VALUES (?, ?, '{APPLYING}', ?) IF NOT EXISTS")
        self._take_over = session.prepare(
            f"UPDATE {table} SET owner = ?, description = ? WHERE version = ? IF owner = ? AND state = '{APPLYING}'")
        self._finish = session.prepare(
            f"UPDATE {table} SET state = '{APPLIED}', applied_at = toTimestamp(now()) WHERE version = ? IF owner = ?")
        self._unclaim = session.prepare(f"DELETE FROM {table} WHERE version = ? IF owner = ? AND state = '{APPLYING}'")

    def apply(self, migration: Migration) -> bool:
        """Brings one version to 'applied'; True when this call ran its statements and recorded it."""
        version, deadline = migration.version, time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            claim = self._claim_of(version)
            step = next_step(claim, time.time_ns() // 1000, STALE_CLAIM_SECONDS)
            if step == "done":
                return False
            if step == "claim" and self._lwt(self._claim, [version, migration.description, self._owner]):
                if self._run(migration):
                    return True
            elif step == "take over" and claim and self._take_over_from(claim.owner, migration):
                if self._run(migration):
                    return True
            elif step == "wait":
                if time.monotonic() > deadline:
                    raise MigrationError(
                        f"migration {version} still being applied by {claim.owner if claim else '?'} after "
                        f"{CLAIM_WAIT_SECONDS:.0f} s; its claim is taken over once {STALE_CLAIM_SECONDS:.0f} s old")
                time.sleep(POLL_SECONDS)
            # Otherwise another process holds the version now (a lost claim, or we were taken over): read it again.

    def _take_over_from(self, dead_owner: str, migration: Migration) -> bool:
        params = [self._owner, migration.description, migration.version, dead_owner]
        if not self._lwt(self._take_over, params):
            return False
        log.warning("migration %d: took over the stale claim of %s", migration.version, dead_owner)
        return True

    def _run(self, migration: Migration) -> bool:
        """Runs a claimed version's statements; False when another process took the claim over meanwhile."""
        try:
            for statement in migration.statements:
                _ddl(self._session, statement.format(keyspace=self._keyspace))
        except BaseException:
            self._release(migration.version)
            raise
        if self._lwt(self._finish, [migration.version, self._owner]):
            log.info("migration %d applied: %s", migration.version, migration.description)
            return True
        return False

    def _release(self, version: int) -> None:
        """A failed statement frees the claim at once, so the next process retries instead of waiting it out."""
        try:
            self._lwt(self._unclaim, [version, self._owner])
        except Exception:  # noqa: BLE001 - the claim then goes stale and is taken over; the first error matters
            log.warning("migration %d: could not release the claim of %s", version, self._owner)

    def _claim_of(self, version: int) -> Claim | None:
        rows = self._session.execute(self._read, [version], execution_profile=SCHEMA_PROFILE)
        row = rows.one()
        return None if row is None else Claim(row.state, row.owner, row.since or 0)

    def _lwt(self, statement: Any, params: list[Any]) -> bool:
        return bool(self._session.execute(statement, params, execution_profile=SCHEMA_PROFILE).was_applied)


async def execute(session: Session, statement: Any, params: Sequence[Any] = (), *, operation: str) -> list[Any]:
    """Runs a statement without blocking the event loop; returns all rows (our queries read one partition).
    `operation` names it in thumbs_cassandra_request_seconds."""
    started = time.perf_counter()
    try:
        return await _execute(session, statement, params)
    finally:
        metrics.CASSANDRA_SECONDS.labels(metrics.process_stage(), operation).observe(time.perf_counter() - started)


async def _execute(session: Session, statement: Any, params: Sequence[Any]) -> list[Any]:
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
