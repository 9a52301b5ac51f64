"""Each stage's core is the pipeline's logic alone: importing it loads no Kafka, Cassandra, HTTP or web driver."""
import importlib
import subprocess
import sys

import pytest

DRIVERS = ("cassandra", "confluent_kafka", "aiohttp", "starlette", "jsonschema_rs")


@pytest.mark.parametrize("core", ["services.fetcher.core", "services.resizer.core", "services.projector.core",
                                  "services.notifier.core", "services.api.task_events", "services.common.model",
                                  "services.common.ports"])
def test_a_core_imports_no_driver(core: str) -> None:
    probe = f"import sys, {core}; print(','.join(m for m in {DRIVERS!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"{core} pulls in {loaded}"


def _modules() -> list[str]:
    import pkgutil

    import services
    import thumbs_devtools

    return sorted(m.name for package in (services, thumbs_devtools)
                  for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}."))


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module: str) -> None:
    """Stage processes import their worker only when started: a broken import must fail here, not in a stack."""
    importlib.import_module(module)
