"""API keys end to end: `thumbs keys` against the real Cassandra, two API processes requiring keys, a task seen only
by its key, revocation, and one rate shared by both processes."""
from __future__ import annotations

import hashlib
import hmac
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from .stack import REPO, ImageServer, Stack, poll_terminal, running_stack, wait_for
from .test_webhooks import Receiver

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # No THUMBS_WEBHOOK_SECRET: with keys, each key signs its own webhooks.
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("keys"),
                       names=("api", "fetcher", "resizer", "projector", "notifier"), AUTH="required") as stack:
        yield stack


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver("127.0.0.2")
    yield server
    server.close()


@pytest.fixture(scope="module")
def second_api(stack: Stack) -> Iterator[str]:
    """Another API process of the same deployment, on its own port."""
    port = _free_port()
    log = open(stack.settings.state_dir / "api-2.log", "ab")  # kept open for the process's life
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "api"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **stack.env, "THUMBS_API_PORT": str(port), "THUMBS_LOG_NAME": "api-2"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/ready") == 200, 60, lambda: "second API not ready")
        yield base
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _thumbs(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "keys", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **stack.env})


def _create(stack: Stack, name: str, *rate: str) -> str:
    return _created(stack, name, *rate)["key"]


def _created(stack: Stack, name: str, *rate: str) -> dict[str, str]:
    """What `thumbs keys create` printed: the key and its webhook secret."""
    created = _thumbs(stack, "create", "--name", name, *rate)
    assert created.returncode == 0, created.stderr
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 60, 30)).save(out, "JPEG")
    return out.getvalue()


def test_a_task_is_seen_by_its_key_only_and_a_revoked_key_is_refused(stack: Stack, second_api: str,
                                                                      images: ImageServer) -> None:
    alpha, beta = _create(stack, "alpha"), _create(stack, "beta", "--rate", "120/min")
    assert _thumbs(stack, "create", "--name", "alpha").returncode == 1  # names are unique
    url = images.add("/keys/a.jpg", _jpeg())
    assert httpx.post(f"{stack.api}/thumbnail", json={"source_image_url": url}).status_code == 401
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {alpha}"}, timeout=10) as client:
        created = client.post("/thumbnail", json={"source_image_url": url})
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        assert poll_terminal(client, task_id)["status"] == "SUCCESS"
    for base in (stack.api, second_api):  # any process answers, each by the same rule
        assert httpx.get(f"{base}/thumbnail/file", params={"task_id": task_id},
                         headers={"Authorization": f"Bearer {alpha}"}).status_code == 200
        hidden = httpx.get(f"{base}/thumbnail", params={"task_id": task_id}, headers={"Authorization": f"Bearer {beta}"})
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "TASK_NOT_FOUND"

    listed = _thumbs(stack, "list")
    assert listed.returncode == 0 and "alpha" in listed.stdout and "120" in listed.stdout
    assert alpha.split("_", 2)[2] not in listed.stdout and beta.split("_", 2)[2] not in listed.stdout
    assert _thumbs(stack, "revoke", "beta").returncode == 0
    assert _thumbs(stack, "revoke", "nobody").returncode == 1
    for base in (stack.api, second_api):  # the key cache holds a record for at most 5 s
        wait_for(lambda b=base: _status_with(b, beta) == 403, 15, lambda: "revoked key still accepted")
    assert _status_with(stack.api, alpha) == 202


def _status_with(base: str, key: str) -> int:
    return httpx.post(f"{base}/thumbnail", json={"source_image_url": "http://127.0.0.2:1/x.jpg"},
                      headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def test_one_rate_holds_across_two_api_processes(stack: Stack, second_api: str) -> None:
    metered = _create(stack, "metered", "--rate", "30/min")
    headers = {"Authorization": f"Bearer {metered}"}
    answers = []
    with httpx.Client(timeout=10, headers=headers) as client:
        for i in range(60):  # alternating, as a load balancer spreads them
            base = (stack.api, second_api)[i % 2]
            answers.append(client.post(f"{base}/thumbnail", json={"source_image_url": f"http://127.0.0.2:1/{i}.jpg"}))
    admitted = [a for a in answers if a.status_code == 202]
    limited = [a for a in answers if a.status_code == 429]
    assert len(admitted) + len(limited) == 60, {a.status_code for a in answers}
    # Each process may admit one request the other has not heard of, and a window boundary in the middle of the
    # run fades a little of the count: 30 to 33.
    assert 30 <= len(admitted) <= 33, len(admitted)
    assert {a.json()["error"]["code"] for a in limited} == {"RATE_LIMITED"}
    assert all(a.headers["ratelimit-limit"] == "30" and a.headers["ratelimit-remaining"] == "0" for a in limited)
    assert all(1 <= int(a.headers["retry-after"]) <= 120 for a in limited)
    assert {a.headers["ratelimit-limit"] for a in admitted} == {"30"}


def test_a_keys_webhooks_are_signed_with_its_own_secret(stack: Stack, receiver: Receiver, images: ImageServer) -> None:
    created = _created(stack, "hooked")
    url = images.add("/keys/hooked.jpg", _jpeg())
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {created['key']}"}, timeout=10) as client:
        posted = client.post("/thumbnail", json={"source_image_url": url, "callback_url": f"{receiver.base}/hooked"})
        assert posted.status_code == 202, posted.text
        task_id = posted.json()["task_id"]
        wait_for(lambda: bool(receiver.at("/hooked")), 60, lambda: str(client.get("/thumbnail", params={"task_id": task_id}).json()))
    (delivery,) = receiver.at("/hooked")
    timestamp = delivery.headers["x-thumbs-timestamp"].encode()
    expected = hmac.new(created["webhook secret"].encode(), timestamp + b"." + delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["x-thumbs-signature"], f"v1={expected}")
    assert b'"status":"SUCCESS"' in delivery.body.replace(b" ", b"") and task_id.encode() in delivery.body
