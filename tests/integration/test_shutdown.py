"""SIGTERM stops a stage cleanly: exit status 0, and nothing it opened is left unclosed (warnings shown)."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .stack import ImageServer, Stack, poll_terminal, running_stack
from .test_pipeline import photo

pytestmark = pytest.mark.integration

SIGNS_OF_A_LEAK = ("ResourceWarning", "Unclosed", "unclosed", "was destroyed but it is pending", "Exception ignored",
                   "Traceback")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONWARNINGS", "always")  # ResourceWarning is hidden by default
        with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("shutdown")) as stack:
            yield stack


@pytest.mark.parametrize("stage", ["fetcher", "resizer", "projector"])
def test_sigterm_closes_everything_the_stage_opened(stage: str, stack: Stack, client: httpx.Client,
                                                    images: ImageServer) -> None:
    url = images.add(f"/shutdown/{stage}.jpg", photo(200, 150, seed=60 + len(stage)))
    task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
    assert poll_terminal(client, task_id)["status"] == "SUCCESS"  # every adapter has been used
    process = stack.processes[stage]
    stack.stop(stage)  # SIGTERM
    stack.start(stage)  # the next case needs it
    assert process.returncode == 0, stack.log_tail(stage)
    log = (stack.settings.state_dir / f"{stage}.log").read_text(errors="replace")
    assert not [sign for sign in SIGNS_OF_A_LEAK if sign in log], log[-3000:]
