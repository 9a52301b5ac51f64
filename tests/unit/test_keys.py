"""API keys and per-key rates: the key format and checks, the sliding-window quota, and the API's answers."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from services.api import keys
from services.api.access import Access
from services.api.app import create_app
from services.api.quota import WINDOW_S, Quotas
from services.api.validation import ApiError
from services.common.model import ApiKey
from services.common.settings import Settings
from tests.fakes import FakeApiKeys, FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails

URL = "http://127.0.0.1:8000/a.jpg"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _key(name: str, rate: int = 600, *, revoked: bool = False) -> tuple[str, ApiKey]:
    presented, digest = keys.new_key(name)
    return presented, ApiKey(name, digest, rate, "whsec", NOW, NOW if revoked else None)


def test_a_key_names_its_record_and_only_its_secret_matches() -> None:
    presented, record = _key("shop-1")
    assert presented.startswith("thk_shop-1_") and keys.name_of(presented) == "shop-1"
    assert keys.verify(presented, record) is keys.Verdict.VALID
    assert record.secret_sha256 not in presented  # only the hash is stored, never the secret
    assert keys.verify(presented[:-1] + ("A" if presented[-1] != "A" else "B"), record) is keys.Verdict.UNKNOWN
    assert keys.verify(presented, None) is keys.Verdict.UNKNOWN
    other, _ = _key("shop-2")
    assert keys.verify(other, record) is keys.Verdict.UNKNOWN  # another key's name
    assert keys.verify(presented, _key("shop-1", revoked=True)[1]) is keys.Verdict.UNKNOWN  # same name, other secret
    revoked_key, revoked = _key("old", revoked=True)
    assert keys.verify(revoked_key, revoked) is keys.Verdict.REVOKED


@pytest.mark.parametrize("text", ["", "thk_", "thk_shop", "thk__secret", "thk_UPPER_secret", "Bearer x", "sk_live_x"])
def test_malformed_keys_name_nothing(text: str) -> None:
    assert keys.name_of(text) is None


def test_bearer_headers_rates_and_names() -> None:
    assert keys.bearer("Bearer abc") == "abc" and keys.bearer("bearer  abc ") == "abc"
    assert keys.bearer(None) is None and keys.bearer("Basic abc") is None and keys.bearer("Bearer ") is None
    assert keys.parse_rate("600/min") == 600 and keys.parse_rate("10/s") == 600 and keys.parse_rate("3600/hour") == 60
    for bad in ("600", "0/min", "x/min", "10/day", "30/hour"):
        with pytest.raises(keys.KeyInputError):
            keys.parse_rate(bad)
    for bad in ("", "-a", "UPPER", "a_b", "a" * 65):
        with pytest.raises(keys.KeyInputError):
            keys.check_name(bad)


def test_the_quota_admits_up_to_the_rate_and_says_when_to_come_back() -> None:
    quotas, start = Quotas(), 1000 * WINDOW_S  # the start of a window
    answers = [quotas.admit("k", 10, start + i * 0.1) for i in range(12)]
    assert [a.admitted for a in answers] == [True] * 10 + [False] * 2
    assert [a.remaining for a in answers[:10]] == list(range(9, -1, -1))
    refused = answers[10]
    assert refused.headers()["RateLimit-Limit"] == "10" and refused.headers()["RateLimit-Remaining"] == "0"
    # Refused 1 s into the window with 10 used: the next window starts in 59 s, and there 10 × (1 - t) + 1 <= 10
    # needs t >= 0.1 of it, 6 s more.
    assert refused.retry_after_s == 59 + 6 and refused.reset_s == 59
    assert not quotas.admit("k", 10, start + 60 + 5).admitted  # still inside the slide
    assert quotas.admit("k", 10, start + 60 + 6.1).admitted
    assert quotas.admit("other", 10, start + 1).admitted  # keys are counted apart


def test_the_previous_window_fades_instead_of_resetting() -> None:
    quotas, start = Quotas(), 1000 * WINDOW_S
    for i in range(10):
        assert quotas.admit("k", 10, start + 50 + i * 0.5).admitted
    # Just past the boundary nearly all of the previous 10 still count: no burst of 10 more.
    assert not quotas.admit("k", 10, start + 61).admitted
    halfway = [quotas.admit("k", 10, start + 90 + i * 0.01).admitted for i in range(10)]
    assert halfway.count(True) == 5  # half the previous 10 still counts, so 5 more fit


def test_processes_tell_each_other_before_they_pass_a_twentieth_of_the_rate() -> None:
    store, start = FakeApiKeys(), 1000 * WINDOW_S
    first, second = (Access(store, required=True, clock=lambda: start + 1.0) for _ in range(2))

    async def admitted(access: Access, record: ApiKey, tries: int) -> int:
        count = 0
        for _ in range(tries):
            try:
                await access.admit(record)
                count += 1
            except ApiError as exc:
                assert exc.status == 429 and exc.code == "RATE_LIMITED" and int(exc.headers["Retry-After"]) >= 1
        return count

    small = _key("small", rate=10)[1]  # a twentieth of 10 is under one: every admission is shared at once
    assert asyncio.run(admitted(first, small, 6)) == 6
    # The first process shared 5 of its 6 (each count is shared before the next admission): the second admits 5,
    # one over the rate, within the tolerance of one unshared admission per process.
    assert asyncio.run(admitted(second, small, 10)) == 5
    large = _key("large", rate=200)[1]  # shared every 10 admissions
    assert asyncio.run(admitted(first, large, 150)) == 150
    assert 50 <= asyncio.run(admitted(second, large, 100)) <= 50 + 200 // 20  # over by at most one twentieth


@pytest.fixture
def fixture_keys() -> tuple[dict[str, str], FakeApiKeys]:
    presented = {}
    records = []
    for name, rate, revoked in (("alpha", 600, False), ("beta", 600, False), ("slow", 2, False), ("gone", 600, True)):
        presented[name], record = _key(name, rate, revoked=revoked)
        records.append(record)
    return presented, FakeApiKeys(*records)


@pytest.fixture
def parts(fixture_keys: tuple[dict[str, str], FakeApiKeys]):
    presented, store = fixture_keys
    publisher = FakePublisher()
    app = create_app(Settings.from_env({"THUMBS_AUTH": "required"}), publisher=publisher, tasks=FakeTasks(),
                     thumbnails=FakeThumbnails(), idempotency_keys=FakeIdempotencyKeys(), api_keys=store)
    with TestClient(app) as client:
        yield client, presented, store, publisher


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_valid_key_nothing_is_served(parts) -> None:
    client, presented, _store, publisher = parts
    missing = client.post("/thumbnail", json={"source_image_url": URL})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "UNAUTHENTICATED"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for token in ("thk_alpha_wrong", "thk_nobody_x", "garbage"):
        refused = client.post("/thumbnail", json={"source_image_url": URL}, headers=_auth(token))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_API_KEY"
    revoked = client.get("/thumbnail", params={"task_id": str(uuid.uuid4())}, headers=_auth(presented["gone"]))
    assert revoked.status_code == 403 and revoked.json()["error"]["code"] == "API_KEY_REVOKED"
    assert publisher.events == []
    for path in ("/health", "/ready", "/livez", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_a_task_is_seen_only_by_the_key_that_created_it(parts) -> None:
    client, presented, _store, publisher = parts
    created = client.post("/thumbnail", json={"source_image_url": URL}, headers=_auth(presented["alpha"]))
    assert created.status_code == 202 and created.headers["ratelimit-limit"] == "600"
    task_id = created.json()["task_id"]
    assert publisher.events[0].payload.owner == "alpha"
    assert client.get("/thumbnail", params={"task_id": task_id}, headers=_auth(presented["alpha"])).status_code == 202
    for path in ("/thumbnail", "/thumbnail/file", "/thumbnail/events"):
        hidden = client.get(path, params={"task_id": task_id}, headers=_auth(presented["beta"]))
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "TASK_NOT_FOUND"  # as if it did not exist


def test_idempotency_keys_are_per_api_key(parts) -> None:
    client, presented, _store, publisher = parts
    headers = {"Idempotency-Key": "order-1"}
    a = client.post("/thumbnail", json={"source_image_url": URL}, headers={**headers, **_auth(presented["alpha"])})
    b = client.post("/thumbnail", json={"source_image_url": URL + "?b"}, headers={**headers, **_auth(presented["beta"])})
    assert a.status_code == b.status_code == 202 and a.json()["task_id"] != b.json()["task_id"]
    assert len(publisher.events) == 2


def test_over_its_rate_a_key_gets_429_with_the_rate_headers(parts) -> None:
    client, presented, _store, publisher = parts
    answers = [client.post("/thumbnail", json={"source_image_url": URL}, headers=_auth(presented["slow"])) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    limited = answers[2]
    assert limited.json()["error"]["code"] == "RATE_LIMITED"
    assert limited.headers["ratelimit-limit"] == "2" and limited.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(limited.headers["retry-after"]) <= 120 and int(limited.headers["ratelimit-reset"]) <= 60
    assert len(publisher.events) == 2
    assert client.post("/thumbnail", json={"source_image_url": URL}, headers=_auth(presented["alpha"])).status_code == 202


def test_key_lookups_are_cached_and_an_unreachable_store_is_a_503(parts) -> None:
    client, presented, store, _publisher = parts
    for _ in range(5):
        client.get("/thumbnail", params={"task_id": str(uuid.uuid4())}, headers=_auth(presented["beta"]))
    assert store.lookups == 1
    store.down = True
    response = client.get("/thumbnail", params={"task_id": str(uuid.uuid4())}, headers=_auth("thk_newname_x"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "UNAVAILABLE"


def test_with_auth_off_no_key_is_asked_for() -> None:
    assert asyncio.run(Access(None, required=False).caller({})) is None
    with pytest.raises(ValueError):
        Access(None, required=True)
