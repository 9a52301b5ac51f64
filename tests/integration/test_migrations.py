"""Versioned migrations against a real node: once per version, under concurrency, over the old unversioned schema."""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Session

from services.common import cassandra
from services.common.cassandra import MIGRATIONS, MIGRATIONS_TABLE, Migration, MigrationError, connect, migrate, replication_cql
from services.common.settings import Settings

from .stack import drop_environment, isolated_env, settings_of

pytestmark = pytest.mark.integration

LATEST = [m.version for m in MIGRATIONS]

# What `thumbs migrate` created before versions existed: the two tables and nothing else.
OLD_SCHEMA = (
    """CREATE TABLE {keyspace}.tasks (task_id uuid PRIMARY KEY, status text, source_url text, rendition text,
        source_sha256 text, rendition_key text, content_type text, width int, height int, size_bytes int,
        deduplicated boolean, error_code text, error_message text, created_at timestamp, fetched_at timestamp,
        completed_at timestamp, updated_at timestamp)""",
    """CREATE TABLE {keyspace}.thumbnails (source_sha256 text, rendition_key text, data blob, content_type text,
        width int, height int, created_at timestamp, PRIMARY KEY ((source_sha256, rendition_key)))""",
)


@pytest.fixture
def settings(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int],
             tmp_path: Path) -> Iterator[Settings]:
    """Settings of a keyspace of its own, dropped after the test."""
    isolated = settings_of(isolated_env(kafka_bootstrap, cassandra_contact, tmp_path))
    try:
        yield isolated
    finally:
        drop_environment(isolated)


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    inspector = connect(settings, timeout=60)
    yield inspector
    inspector.cluster.shutdown()


def ledger(session: Session, keyspace: str) -> dict[int, object]:
    return {row.version: row for row in session.execute(f"SELECT * FROM {keyspace}.schema_migrations")}


def speculative_retry(session: Session, keyspace: str, table: str) -> str:
    row = session.execute(
        "SELECT speculative_retry FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
        (keyspace, table),
    ).one()
    return row.speculative_retry


def assert_all_applied(session: Session, keyspace: str) -> None:
    rows = ledger(session, keyspace)
    assert sorted(rows) == LATEST
    for version, row in rows.items():
        assert row.state == "applied" and row.owner and row.applied_at, (version, row)
        assert row.description == MIGRATIONS[version - 1].description
    for table in ("tasks", "thumbnails"):
        assert speculative_retry(session, keyspace, table) == "50ms"


def prepare_keyspace(session: Session, settings: Settings) -> None:
    """The keyspace and an empty schema_migrations table, as migrate's first steps leave them."""
    session.execute(f"CREATE KEYSPACE {settings.keyspace} WITH replication = "
                    f"{replication_cql(settings.cassandra_replication)}", timeout=60)
    session.execute(MIGRATIONS_TABLE.format(keyspace=settings.keyspace), timeout=60)


def test_migrating_twice_records_each_version_once(settings: Settings, session: Session) -> None:
    assert migrate(settings) == LATEST
    first = ledger(session, settings.keyspace)
    assert migrate(settings) == []
    assert ledger(session, settings.keyspace) == first  # the second run changed no row
    assert_all_applied(session, settings.keyspace)


def test_concurrent_migrations_apply_each_version_exactly_once(settings: Settings, session: Session) -> None:
    workers = 6
    start = threading.Barrier(workers)
    applied: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            start.wait(30)
            applied[worker] = migrate(settings)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(applied) == workers
    counts = Counter(version for versions in applied.values() for version in versions)
    assert counts == Counter(LATEST), applied  # every version applied by exactly one caller
    assert_all_applied(session, settings.keyspace)
    rows = ledger(session, settings.keyspace)
    owners = {version: (row.owner, row.applied_at) for version, row in rows.items()}
    assert rows[1].applied_at <= rows[2].applied_at, owners  # in order


def test_keyspace_from_the_unversioned_schema_migrates_cleanly(settings: Settings, session: Session) -> None:
    keyspace = settings.keyspace
    session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                    f"{replication_cql(settings.cassandra_replication)}", timeout=60)
    for statement in OLD_SCHEMA:
        session.execute(statement.format(keyspace=keyspace), timeout=60)
    session.execute(f"INSERT INTO {keyspace}.tasks (task_id, status) VALUES (uuid(), 'SUCCESS')")

    assert migrate(settings) == LATEST
    assert_all_applied(session, keyspace)
    assert [row.status for row in session.execute(f"SELECT status FROM {keyspace}.tasks")] == ["SUCCESS"]


def test_a_stale_claim_is_taken_over(settings: Settings, session: Session) -> None:
    prepare_keyspace(session, settings)
    long_ago = (time.time_ns() // 1000) - 300 * 1_000_000  # its owner died five minutes ago
    session.execute(
        f"INSERT INTO {settings.keyspace}.schema_migrations (version, description, state, owner) "
        f"VALUES (1, 'x', 'applying', 'dead-host:1:0') USING TIMESTAMP {long_ago}"
    )
    assert migrate(settings) == LATEST
    assert ledger(session, settings.keyspace)[1].owner != "dead-host:1:0"
    assert_all_applied(session, settings.keyspace)


def test_a_live_claim_is_waited_for_then_reported(settings: Settings, session: Session,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_keyspace(session, settings)
    session.execute(
        f"INSERT INTO {settings.keyspace}.schema_migrations (version, description, state, owner) "
        f"VALUES (1, 'x', 'applying', 'busy-host:1:0')"
    )
    monkeypatch.setattr(cassandra, "CLAIM_WAIT_SECONDS", 1.0)
    began = time.monotonic()
    with pytest.raises(MigrationError, match="busy-host:1:0"):
        migrate(settings)
    assert time.monotonic() - began >= 1.0
    assert ledger(session, settings.keyspace)[1].state == "applying"  # the live owner's claim is left alone


def test_a_failing_migration_releases_its_claim(settings: Settings, session: Session,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Migration(len(MIGRATIONS) + 1, "a table that does not exist",
                       ("ALTER TABLE {keyspace}.missing WITH comment = 'x'",))
    monkeypatch.setattr(cassandra, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(InvalidRequest):
        migrate(settings)
    rows = ledger(session, settings.keyspace)
    assert sorted(rows) == LATEST  # the earlier versions stay applied; the broken one is free to claim again
    assert all(row.state == "applied" for row in rows.values())
