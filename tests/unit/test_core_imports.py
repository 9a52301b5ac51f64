"""Each stage's core is the pipeline's logic alone: importing it loads no Kafka, Cassandra, HTTP or web driver."""
import subprocess
import sys

import pytest

DRIVERS = ("cassandra", "confluent_kafka", "aiohttp", "starlette", "jsonschema_rs")


@pytest.mark.parametrize("core", ["services.fetcher.core", "services.resizer.core", "services.projector.core",
                                  "services.common.model", "services.common.ports"])
def test_a_core_imports_no_driver(core: str) -> None:
    probe = f"import sys, {core}; print(','.join(m for m in {DRIVERS!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"{core} pulls in {loaded}"
