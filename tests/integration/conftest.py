"""Session fixtures: where integration tests find a real Kafka and Cassandra (never skipped).

Each server comes from, in order: THUMBS_TEST_* variables naming a running one; containers, when a Docker
engine answers; otherwise `thumbs servers` (started if not answering, left running for the next session).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from services.common.settings import Settings
from thumbs_devtools.lifecycle import ensure_running

from .containers import cassandra_container, docker_answers, kafka_container
from .stack import ImageServer, Stack


@pytest.fixture(scope="session")
def docker_available() -> bool:
    return docker_answers()


@pytest.fixture(scope="session")
def kafka_bootstrap(docker_available: bool) -> Iterator[str]:
    """host:port of a Kafka broker that answers."""
    given = os.environ.get("THUMBS_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
    elif docker_available:
        with kafka_container() as bootstrap:
            yield bootstrap
    else:
        settings = Settings.from_env()
        ensure_running(settings)  # raises with the log tail when a server cannot start
        yield settings.kafka_bootstrap


@pytest.fixture(scope="session")
def cassandra_contact(docker_available: bool) -> Iterator[tuple[tuple[str, ...], int]]:
    """(contact hosts, native port) of a Cassandra node that answers."""
    given = os.environ.get("THUMBS_TEST_CASSANDRA_HOSTS")
    if given:
        hosts = tuple(host.strip() for host in given.split(",") if host.strip())
        yield hosts, int(os.environ.get("THUMBS_TEST_CASSANDRA_PORT", "9042"))
    elif docker_available:
        with cassandra_container() as contact:
            yield contact
    else:
        settings = Settings.from_env()
        ensure_running(settings)
        yield settings.cassandra_hosts, settings.cassandra_port


# Shared by the modules that define a module-scoped `stack` (each its own topics and keyspace).


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    """Source images served on 127.0.0.2, the one network the stacks' fetchers may reach."""
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api, timeout=10) as http:
        yield http
