"""The Cassandra client's options from settings, the migration list and the claim decisions, without a server."""
from __future__ import annotations

import re
import ssl

import certifi
import pytest
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import named_tuple_factory

from services.common.cassandra import (
    APPLIED,
    APPLYING,
    MIGRATIONS,
    SCHEMA_PROFILE,
    Claim,
    Migration,
    MigrationError,
    cached_named_tuple_factory,
    cluster_options,
    next_step,
    validate,
)
from services.common.settings import Settings

SECOND = 1_000_000  # µs


def settings(**env: str) -> Settings:
    return Settings.from_env({f"THUMBS_{name.upper()}": value for name, value in env.items()})


def test_defaults_are_token_aware_over_the_contact_points_datacenter() -> None:
    options = cluster_options(settings(cassandra_hosts="10.0.0.1,10.0.0.2", cassandra_port="9142"), timeout=7)
    assert options["contact_points"] == ["10.0.0.1", "10.0.0.2"] and options["port"] == 9142
    assert options["protocol_version"] == 5 and options["connect_timeout"] == 7
    assert options["max_schema_agreement_wait"] == 60  # DDL waits for every live node before the next statement
    assert isinstance(options["reconnection_policy"], ExponentialReconnectionPolicy)
    default = options["execution_profiles"][EXEC_PROFILE_DEFAULT]
    assert isinstance(default.load_balancing_policy, TokenAwarePolicy)
    child = default.load_balancing_policy._child_policy
    assert isinstance(child, DCAwareRoundRobinPolicy) and not child.local_dc  # inferred from the contact points
    assert default.consistency_level == ConsistencyLevel.LOCAL_QUORUM and default.request_timeout == 7
    assert default.row_factory is cached_named_tuple_factory
    assert "auth_provider" not in options and "ssl_context" not in options


def test_local_datacenter_and_consistency_come_from_settings() -> None:
    options = cluster_options(settings(cassandra_local_dc="dc2", cassandra_consistency="EACH_QUORUM"))
    for name in (EXEC_PROFILE_DEFAULT, SCHEMA_PROFILE):
        profile = options["execution_profiles"][name]
        assert profile.load_balancing_policy._child_policy.local_dc == "dc2"
        assert profile.consistency_level == ConsistencyLevel.EACH_QUORUM


def test_each_profile_has_its_own_policy_instance() -> None:
    profiles = cluster_options(settings())["execution_profiles"]
    assert profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy is not profiles[SCHEMA_PROFILE].load_balancing_policy


def test_schema_profile_reads_lwt_results_at_serial() -> None:
    schema = cluster_options(settings())["execution_profiles"][SCHEMA_PROFILE]
    assert schema.serial_consistency_level == ConsistencyLevel.SERIAL
    assert schema.row_factory is named_tuple_factory  # the driver's `was_applied` accepts only its own factories
    assert schema.request_timeout >= 60


def test_username_turns_on_password_authentication_without_showing_the_password() -> None:
    options = cluster_options(settings(cassandra_username="thumbs", cassandra_password="s3cret"))
    provider = options["auth_provider"]
    assert isinstance(provider, PlainTextAuthProvider)
    assert provider.username == "thumbs" and provider.password == "s3cret"
    assert "s3cret" not in repr(options) and "s3cret" not in repr(settings(cassandra_password="s3cret"))


def test_ca_turns_on_tls_that_verifies_the_node() -> None:
    context = cluster_options(settings(cassandra_ssl_ca_location=certifi.where()))["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert context.cert_store_stats()["x509_ca"] > 0


def test_a_missing_ca_file_fails_at_start_up() -> None:
    with pytest.raises(FileNotFoundError):
        cluster_options(settings(cassandra_ssl_ca_location="/nonexistent/ca.pem"))


def test_migration_list_is_valid_and_starts_with_the_original_tables() -> None:
    validate(MIGRATIONS)
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    first = [s.format(keyspace="ks") for s in MIGRATIONS[0].statements]
    assert first[0].startswith("CREATE TABLE IF NOT EXISTS ks.tasks (") and "task_id uuid PRIMARY KEY" in first[0]
    assert first[1].startswith("CREATE TABLE IF NOT EXISTS ks.thumbnails (")
    assert "PRIMARY KEY ((source_sha256, rendition_key))" in first[1]
    assert all("speculative_retry = '50ms'" in s for s in MIGRATIONS[1].statements)


@pytest.mark.parametrize("migrations,problem", [
    ((Migration(2, "x", ("ALTER TABLE {keyspace}.t WITH comment = 'x'",)),), "out of order"),
    ((Migration(1, "a", ("ALTER TABLE {keyspace}.t WITH comment = 'a'",)),
      Migration(1, "b", ("ALTER TABLE {keyspace}.t WITH comment = 'b'",))), "out of order"),
    ((Migration(1, " ", ("ALTER TABLE {keyspace}.t WITH comment = 'x'",)),), "description"),
    ((Migration(1, "x", ()),), "at least one statement"),
    ((Migration(1, "x", ("ALTER TABLE t WITH comment = 'x'",)),), "{keyspace}"),
    ((Migration(1, "x", ("CREATE TABLE {keyspace}.t (k int PRIMARY KEY)",)),), "IF NOT EXISTS"),
])
def test_malformed_migration_lists_are_rejected(migrations: tuple[Migration, ...], problem: str) -> None:
    with pytest.raises(MigrationError, match=re.escape(problem)):
        validate(migrations)


@pytest.mark.parametrize("claim,step", [
    (None, "claim"),
    (Claim(APPLIED, "a", 0), "done"),  # an applied version stays applied however old
    (Claim(APPLYING, "a", 1000 * SECOND - 5 * SECOND), "wait"),
    (Claim(APPLYING, "a", 1000 * SECOND - 120 * SECOND), "wait"),  # exactly at the bound: still its owner's
    (Claim(APPLYING, "a", 1000 * SECOND - 121 * SECOND), "take over"),
])
def test_next_step_for_a_version(claim: Claim | None, step: str) -> None:
    assert next_step(claim, now_micros=1000 * SECOND, stale_after=120) == step
