"""docker-compose.yml is valid Compose and wires the system in the right order."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import compose_spec
import pytest

from services.cli import COMMANDS
from services.common.settings import Settings
from thumbs_devtools.versions import load as load_versions

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
STAGES = ("api", "fetcher", "resizer", "projector", "notifier", "stats")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # apply_merge resolves the `<<: *app` merge keys the way Docker Compose does.
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(COMPOSE.read_text())
    parsed.validate()
    parsed.to_spec()  # full schema validation through the pydantic models
    return parsed.to_dict()


def conditions(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def healthcheck(service: dict[str, Any]) -> str:
    # compose-spec turns ["CMD-SHELL", "cmd"] into the plain string "cmd".
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "cassandra", "init", *STAGES}


def test_dependencies_name_existing_services(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert set(conditions(service)) <= set(compose["services"]), name


def test_init_waits_for_healthy_servers_and_runs_setup(compose: dict[str, Any]) -> None:
    init = compose["services"]["init"]
    assert conditions(init) == {"kafka": "service_healthy", "cassandra": "service_healthy"}
    assert "thumbs topics" in " ".join(init["command"]) and "thumbs migrate" in " ".join(init["command"])
    assert init["restart"] == "no"


@pytest.mark.parametrize("stage", STAGES)
def test_stages_start_after_init(compose: dict[str, Any], stage: str) -> None:
    service = compose["services"][stage]
    assert conditions(service) == {
        "init": "service_completed_successfully", "kafka": "service_healthy", "cassandra": "service_healthy",
    }
    assert service["command"] == ["thumbs", stage]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["environment"] == {
        "THUMBS_KAFKA_BOOTSTRAP": "kafka:9092", "THUMBS_CASSANDRA_HOSTS": "cassandra", "THUMBS_API_HOST": "0.0.0.0",
        "THUMBS_METRICS_HOST": "0.0.0.0", "THUMBS_STATS_URL": "http://stats:9106",
    }


def test_the_api_reaches_the_stats_views(compose: dict[str, Any]) -> None:
    """The stats service binds its web views to THUMBS_METRICS_HOST on THUMBS_STATS_PORT; the api asks there."""
    services = compose["services"]
    url = urlsplit(services["api"]["environment"]["THUMBS_STATS_URL"])
    stats = Settings.from_env({k: str(v) for k, v in services["stats"]["environment"].items()})
    assert url.scheme == "http" and url.hostname == "stats" and url.hostname in services
    assert url.port == stats.stats_port
    assert stats.metrics_host == "0.0.0.0", "bound to loopback, the stats views are unreachable from the api"


def test_servers_and_api_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "kafka-broker-api-versions" in healthcheck(services["kafka"])
    assert "cqlsh" in healthcheck(services["cassandra"])
    assert "/health" in healthcheck(services["api"])


def test_images_follow_pinned_versions(compose: dict[str, Any]) -> None:
    versions = load_versions()
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{versions.kafka}"
    major_minor = ".".join(versions.cassandra.split(".")[:2])
    assert compose["services"]["cassandra"]["image"] == f"cassandra:{major_minor}"


def test_kafka_takes_inline_images(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 32 * 1024 * 1024
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


def test_containers_run_only_commands_of_the_service_package(compose: dict[str, Any]) -> None:
    # The image holds the service's wheel alone: `thumbs run` and `thumbs servers` (thumbs-devtools) are not in it.
    for name, service in compose["services"].items():
        command = service.get("command", [])
        for used in re.findall(r"\bthumbs (\w+)", command if isinstance(command, str) else " ".join(command)):
            assert used in COMMANDS, f"{name}: thumbs {used}"
