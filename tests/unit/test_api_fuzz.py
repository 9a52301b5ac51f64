"""Property-based fuzzing of the HTTP API from its own /openapi.json: no 5xx, responses match the spec.

The API runs in process with in-memory ports, so fuzzed URLs are never fetched.
"""
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from services.api.app import create_app
from services.common.settings import Settings
from services.stats.core import empty, report
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeStatsStage, FakeTasks, FakeThumbnails

# Schemathesis' list of statuses that reject invalid input, plus 413: a generated body over the API's
# 16 KiB limit is rejected for its size before its content is looked at.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
)


@pytest.fixture(scope="module")
def stats_stage() -> Iterator[FakeStatsStage]:
    stage = FakeStatsStage(report({**empty(), "requested": 1, "latency_buckets": {"40": 1}}, [(0.0, empty())]))
    yield stage
    stage.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_survives_generated_requests(mode: GenerationMode, stats_stage: FakeStatsStage) -> None:
    app = create_app(Settings(stats_url=stats_stage.url), publisher=FakePublisher(), tasks=FakeTasks(),
                     thumbnails=FakeThumbnails(), idempotency_keys=FakeIdempotencyKeys())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8
    if mode is GenerationMode.NEGATIVE:  # only operations that take input can be sent invalid input
        operations = [op for op in operations if op.path.startswith(("/thumbnail", "/stats"))]
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        # Derandomized: the same examples on every run, so CI cannot fail on a draw; widen max_examples to explore.
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def check(case: schemathesis.Case) -> None:
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
                # Whether a callback URL is accepted depends on the deployment (a signing secret, DNS, the allow list),
                # not on the schema alone: tests/unit/test_api.py covers it. Without a secret here, every one is refused.
                case.body.pop("callback_url", None)
            if isinstance(case.query, dict):
                # The in-memory tasks never finish, so every `wait` would last its full length: tests/unit/test_api.py covers it.
                case.query.pop("wait", None)
            case.call_and_validate()

        check()
