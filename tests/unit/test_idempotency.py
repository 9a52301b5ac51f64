"""Idempotent submits: the decision core, and the API's answers with in-memory ports."""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from services.api import idempotency
from services.api.app import create_app
from services.api.idempotency import Decision, decide
from services.api.validation import ApiError
from services.common.model import IdempotencyClaim, Rendition, Requested
from services.common.settings import Settings
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails

URL = "http://127.0.0.1:8000/a.jpg"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _claim(fingerprint: str = "f", *, at: datetime = T0) -> IdempotencyClaim:
    return IdempotencyClaim(str(uuid.uuid4()), str(uuid.uuid4()), fingerprint, at)


def test_the_decision_follows_from_the_claim_alone() -> None:
    assert decide(_claim("f"), "f", T0, accepted=True) is Decision.REUSE
    assert decide(_claim("f"), "g", T0, accepted=True) is Decision.CONFLICT
    assert decide(_claim("f"), "g", T0 + timedelta(hours=1), accepted=False) is Decision.CONFLICT  # never taken over
    stale = T0 + idempotency.STALE_AFTER
    assert decide(_claim("f"), "f", stale - timedelta(seconds=1), accepted=False) is Decision.IN_FLIGHT
    assert decide(_claim("f"), "f", stale, accepted=False) is Decision.TAKE_OVER
    assert decide(_claim("f"), "f", stale, accepted=True) is Decision.REUSE


@pytest.mark.parametrize("value", ["", "a" * 256, "has space", "tab\tkey", "ünïcode"])
def test_malformed_keys_are_refused(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        idempotency.parse_key(value)
    assert caught.value.status == 400 and caught.value.code == "INVALID_IDEMPOTENCY_KEY"


def test_keys_and_fingerprints() -> None:
    assert idempotency.parse_key(None) is None
    assert idempotency.parse_key("a" * 255) == "a" * 255
    plain = idempotency.fingerprint(Requested(URL))
    assert plain == idempotency.fingerprint(Requested(URL, Rendition(100, 100, "jpeg", 85)))
    assert plain != idempotency.fingerprint(Requested(URL, Rendition(width=200)))
    assert plain != idempotency.fingerprint(Requested(URL + "?v=2"))
    assert plain != idempotency.fingerprint(Requested(URL, callback_url="https://example.com/hook"))
    assert idempotency.fingerprint(Requested(URL, callback_url="https://example.com/a")) != \
        idempotency.fingerprint(Requested(URL, callback_url="https://example.com/b"))
    assert plain == idempotency.fingerprint(Requested(URL, owner="team-a"))  # the owner is the key's scope instead
    # Claims stored before callback_url existed keep matching the same request.
    before_fit_modes = {"width": 100, "height": 100, "format": "jpeg", "quality": 85}
    assert plain == hashlib.sha256(json.dumps({"source_url": URL, "rendition": before_fit_modes}, sort_keys=True).encode()).hexdigest()
    assert plain != idempotency.fingerprint(Requested(URL, Rendition(fit="cover")))
    assert plain != idempotency.fingerprint(Requested(URL, more_renditions=(Rendition(),)))
    assert idempotency.claim_time().microsecond % 1000 == 0  # what Cassandra stores, so a take-over compares equal


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def keys() -> FakeIdempotencyKeys:
    return FakeIdempotencyKeys()


@pytest.fixture
def client(publisher: FakePublisher, keys: FakeIdempotencyKeys) -> TestClient:
    app = create_app(Settings(), publisher=publisher, tasks=FakeTasks(), thumbnails=FakeThumbnails(), idempotency_keys=keys)
    with TestClient(app) as test_client:
        yield test_client


def _post(client: TestClient, body: dict | bytes, key: str | None = "key-1"):
    headers = {"Idempotency-Key": key} if key is not None else {}
    if isinstance(body, bytes):
        return client.post("/thumbnail", content=body, headers={**headers, "Content-Type": "application/json"})
    return client.post("/thumbnail", json=body, headers=headers)


def test_a_retry_with_the_same_key_and_body_gets_the_same_task(client: TestClient, publisher: FakePublisher) -> None:
    first = _post(client, {"source_image_url": URL})
    # The same request, spelt differently: key order, spacing and a default written out.
    again = _post(client, b'{ "height": 100, "source_image_url": "' + URL.encode() + b'" }')
    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert len(publisher.events) == 1  # no second task, so no second fetch


def test_the_same_key_with_another_body_is_a_conflict(client: TestClient, publisher: FakePublisher) -> None:
    _post(client, {"source_image_url": URL})
    response = _post(client, {"source_image_url": URL, "width": 200})
    assert response.status_code == 409 and response.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(publisher.events) == 1


def test_requests_without_a_key_or_with_other_keys_are_separate_tasks(client: TestClient, publisher: FakePublisher,
                                                                       keys: FakeIdempotencyKeys) -> None:
    ids = {_post(client, {"source_image_url": URL}, key).json()["task_id"] for key in (None, None, "key-1", "key-2")}
    assert len(ids) == 4 and len(publisher.events) == 4
    assert sorted(k for _scope, k in keys.claims) == ["key-1", "key-2"]


def test_a_failed_publish_releases_the_key(client: TestClient, publisher: FakePublisher,
                                           keys: FakeIdempotencyKeys) -> None:
    publisher.down = True
    assert _post(client, {"source_image_url": URL}).status_code == 503
    assert keys.claims == {}  # nothing was accepted: the key is free again
    publisher.down = False
    retried = _post(client, {"source_image_url": URL})
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
    assert [e.task_id for e in publisher.events] == [retried.json()["task_id"]]


def test_a_request_still_being_accepted_is_not_duplicated(client: TestClient, publisher: FakePublisher,
                                                          keys: FakeIdempotencyKeys) -> None:
    fingerprint = idempotency.fingerprint(Requested(URL))
    keys.claims[("", "key-1")] = _claim(fingerprint, at=idempotency.claim_time())  # claimed, its task not yet accepted
    response = _post(client, {"source_image_url": URL})
    assert response.status_code == 409 and response.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert response.headers["retry-after"] == "1" and publisher.events == []


def test_a_claim_left_unpublished_by_a_dead_request_is_taken_over(client: TestClient, publisher: FakePublisher,
                                                                  keys: FakeIdempotencyKeys) -> None:
    fingerprint = idempotency.fingerprint(Requested(URL))
    stale = _claim(fingerprint, at=idempotency.claim_time() - idempotency.STALE_AFTER - timedelta(seconds=1))
    keys.claims[("", "key-1")] = stale
    response = _post(client, {"source_image_url": URL})
    assert response.status_code == 202 and response.json()["task_id"] == stale.task_id
    [event] = publisher.events  # the dead request's task, under its own ids: a duplicate downstream is harmless
    assert (event.task_id, event.event_id) == (stale.task_id, stale.event_id)
    assert client.get("/thumbnail", params={"task_id": stale.task_id}).status_code == 202  # accepted: it has a row
    assert _post(client, {"source_image_url": URL}).json()["task_id"] == stale.task_id and len(publisher.events) == 1


def test_an_unreachable_key_store_accepts_nothing(client: TestClient, publisher: FakePublisher,
                                                  keys: FakeIdempotencyKeys) -> None:
    keys.down = True
    response = _post(client, {"source_image_url": URL})
    assert response.status_code == 503 and response.json()["error"]["code"] == "UNAVAILABLE"
    assert publisher.events == []
    assert _post(client, {"source_image_url": URL}, key=None).status_code == 202  # without a key, no store is needed


def test_a_malformed_key_is_a_400(client: TestClient, publisher: FakePublisher) -> None:
    response = _post(client, {"source_image_url": URL}, key="not valid")
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert publisher.events == []
