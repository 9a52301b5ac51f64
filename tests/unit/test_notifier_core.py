"""The notifier core: whether a webhook goes out, its body and signature, retries, giving up, and what the row records."""
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.model import (
    WEBHOOK_RETRY,
    Completed,
    Event,
    EventError,
    Failed,
    Rendition,
    Requested,
    WebhookDelivery,
)
from services.common.retry_topic import ATTEMPT_HEADER, NOT_BEFORE_HEADER, RetryPolicy
from services.notifier.core import Answer, SigningSecret, notify, signature, signed_headers, webhook_body
from services.projector.core import project
from tests.fakes import FakeTasks

README = Path(__file__).resolve().parents[2] / "README.md"
TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"
HOOK = "https://hooks.example.com/thumbs"
SECRET = "s3cret"
NOW = 1_800_000_000.0
POLICY = RetryPolicy(max_attempts=3, base_seconds=2.0)
COMPLETED = Completed("ab" * 32, Rendition(), 1, "image/jpeg", 100, 75, 2048, False)


@dataclass
class Receiver:
    """Answers each post with the next of `answers`; records what it was sent."""

    answers: list[Answer] = field(default_factory=lambda: [Answer(200)])
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        self.posts.append((url, body, dict(headers)))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def _rows(callback_url: str | None = HOOK, owner: str | None = None) -> FakeTasks:
    tasks = FakeTasks()
    await tasks.apply(project(Event(TASK, Requested("http://img.example.com/a.jpg", callback_url=callback_url, owner=owner), "api")))
    return tasks


def _outcome(payload: Completed | Failed = COMPLETED) -> Event:
    return Event(TASK, payload, "resizer", event_id="0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01", occurred_at="2026-12-01T10:00:00.000000Z")


def _secret(secret: str) -> SigningSecret:
    async def signing_secret(_owner: str | None) -> str:
        return secret

    return signing_secret


async def _notify(event: Event, rows: FakeTasks, receiver: Receiver, headers: Mapping[str, bytes] | None = None,
                  secret: str = SECRET):
    return await notify(event, headers or {}, rows, receiver, _secret(secret), POLICY, now=lambda: NOW, jitter=lambda: 0.5,
                        pause=_no_pause)


async def _no_pause(_seconds: float) -> None:
    pass


async def test_a_success_is_posted_once_signed_and_recorded_delivered() -> None:
    rows, receiver = await _rows(), Receiver()
    notified = await _notify(_outcome(), rows, receiver)
    assert notified.outcome == "delivered" and notified.outputs == []
    [(url, body, headers)] = receiver.posts
    assert url == HOOK and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "task_id": TASK, "status": "SUCCESS", "occurred_at": "2026-12-01T10:00:00.000000Z",
        "thumbnail": {"content_type": "image/jpeg", "width": 100, "height": 75, "source_sha256": "ab" * 32,
                      "deduplicated": False, "url": f"/thumbnail/file?task_id={TASK}"},
        "renditions": [{"rendition": {"width": 100, "height": 100, "format": "jpeg", "quality": 85, "fit": "contain",
                                      "gravity": "center", "background": None, "enlarge": False},
                        "content_type": "image/jpeg", "width": 100, "height": 75, "deduplicated": False,
                        "url": f"/thumbnail/file?task_id={TASK}&rendition=0"}],
    }
    assert headers["X-Thumbs-Delivery"] == "0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01"
    assert headers["X-Thumbs-Timestamp"] == str(int(NOW))
    # What a receiver computes, written out independently of the code under test.
    expected = hmac.new(SECRET.encode(), f"{int(NOW)}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Thumbs-Signature"] == f"v1={expected}"
    view = await rows.get(TASK)
    assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("delivered", 1, 200)


async def test_a_failure_carries_its_error_and_no_thumbnail() -> None:
    body = json.loads(webhook_body(_outcome(Failed("fetcher", "SOURCE_HTTP_ERROR", "origin answered HTTP 404"))))
    assert body["status"] == "FAILURE" and "thumbnail" not in body
    assert body["error"] == {"code": "SOURCE_HTTP_ERROR", "message": "origin answered HTTP 404"}


def test_the_signature_covers_timestamp_and_body() -> None:
    assert signature("k", 1, b"{}") == "v1=" + hmac.new(b"k", b"1.{}", hashlib.sha256).hexdigest()
    assert signature("k", 2, b"{}") != signature("k", 1, b"{}") != signature("k", 1, b"{ }")


async def test_a_refused_delivery_is_retried_with_backoff_then_given_up() -> None:
    rows, receiver = await _rows(), Receiver([Answer(500), Answer(None, reason="timed out"), Answer(503)])
    first = await _notify(_outcome(), rows, receiver)
    assert first.outcome == "retried"
    [retry] = first.outputs
    headers = dict(retry.headers)
    assert retry.topic == WEBHOOK_RETRY and retry.event == _outcome()  # the same event: the same delivery id
    assert headers[ATTEMPT_HEADER] == b"2" and headers[NOT_BEFORE_HEADER] == str(int((NOW + 2.0) * 1000)).encode()
    assert (await rows.get(TASK)).webhook_state == "pending"
    second = await _notify(retry.event, rows, receiver, headers)
    assert second.outcome == "retried" and dict(second.outputs[0].headers)[ATTEMPT_HEADER] == b"3"
    view = await rows.get(TASK)
    assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("pending", 2, None)  # no answer
    last = await _notify(retry.event, rows, receiver, dict(second.outputs[0].headers))
    assert last.outcome == "failed" and last.outputs == []
    view = await rows.get(TASK)
    assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("failed", 3, 503)
    assert len({headers["X-Thumbs-Delivery"] for _url, _body, headers in receiver.posts}) == 1


async def test_fail_twice_then_succeed_delivers_on_the_third_attempt() -> None:
    rows, receiver = await _rows(), Receiver([Answer(500), Answer(500), Answer(204)])
    headers: Mapping[str, bytes] = {}
    outcomes = []
    for _ in range(3):
        notified = await _notify(_outcome(), rows, receiver, headers)
        outcomes.append(notified.outcome)
        headers = dict(notified.outputs[0].headers) if notified.outputs else {}
    assert outcomes == ["retried", "retried", "delivered"]
    view = await rows.get(TASK)
    assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("delivered", 3, 204)


async def test_a_forbidden_address_at_delivery_is_given_up_at_once() -> None:
    rows, receiver = await _rows(), Receiver([Answer(None, permanent=True, reason="callback_url's host is not a public address")])
    notified = await _notify(_outcome(), rows, receiver)
    assert notified.outcome == "failed" and notified.outputs == []
    assert (await rows.get(TASK)).webhook_state == "failed"


@pytest.mark.parametrize("state", ["delivered", "failed"])
async def test_a_settled_webhook_is_not_sent_again(state: str) -> None:
    rows, receiver = await _rows(), Receiver()
    await rows.record_webhook(WebhookDelivery(TASK, state, 2, 200, 0))
    notified = await _notify(_outcome(), rows, receiver, {ATTEMPT_HEADER: b"3"})
    assert notified.outcome is None and notified.outputs == [] and receiver.posts == []


async def test_no_callback_no_webhook() -> None:
    rows, receiver = await _rows(callback_url=None), Receiver()
    notified = await _notify(_outcome(), rows, receiver)
    assert notified.outcome is None and notified.outputs == [] and receiver.posts == [] and rows.webhook_writes == []


async def test_an_outcome_before_its_request_is_projected_is_looked_at_again_a_bounded_number_of_times() -> None:
    rows, receiver = FakeTasks(), Receiver()
    await rows.apply(project(_outcome()))  # the outcome's row update arrived; the request's not yet
    early = await _notify(_outcome(), rows, receiver)
    assert early.outcome is None and [o.topic for o in early.outputs] == [WEBHOOK_RETRY]
    assert dict(early.outputs[0].headers)[ATTEMPT_HEADER] == b"2"
    assert receiver.posts == [] and rows.webhook_writes == []  # nothing to record in a row that names no request
    late = await _notify(_outcome(), FakeTasks(), receiver, {ATTEMPT_HEADER: str(POLICY.max_attempts).encode()})
    assert late.outcome is None and late.outputs == [] and receiver.posts == []


async def test_without_a_signing_secret_nothing_is_sent_unsigned() -> None:
    rows, receiver = await _rows(), Receiver()
    notified = await _notify(_outcome(), rows, receiver, secret="")
    assert notified.outcome == "failed" and receiver.posts == []
    assert (await rows.get(TASK)).webhook_state == "failed"


async def test_the_secret_is_chosen_by_the_tasks_owner() -> None:
    rows, receiver = await _rows(owner="team-a"), Receiver()
    asked: list[str | None] = []

    async def secret_of(owner: str | None) -> str:
        asked.append(owner)
        return "team-a-secret"

    await notify(_outcome(), {}, rows, receiver, secret_of, POLICY, now=lambda: NOW, pause=_no_pause)
    [(_url, body, headers)] = receiver.posts
    assert asked == ["team-a"] and headers["X-Thumbs-Signature"] == signature("team-a-secret", int(NOW), body)


async def test_only_outcomes_belong_here() -> None:
    with pytest.raises(EventError):
        await _notify(Event(TASK, Requested("http://img.example.com/a.jpg"), "api"), await _rows(), Receiver())


def test_a_late_attempt_never_undoes_a_later_one() -> None:
    def stamp(state: str, attempts: int) -> int:
        return WebhookDelivery(TASK, state, attempts, None, 0).timestamp

    assert stamp("pending", 1) < stamp("pending", 2) < stamp("failed", 1) < stamp("failed", 5) < stamp("delivered", 1)
    assert stamp("pending", 10**6) < stamp("failed", 1)


async def test_the_row_keeps_the_settled_state_whatever_order_attempts_are_recorded_in() -> None:
    rows = await _rows()
    await rows.record_webhook(WebhookDelivery(TASK, "delivered", 2, 200, 2))
    await rows.record_webhook(WebhookDelivery(TASK, "pending", 1, 500, 1))  # attempt 1, recorded late
    await rows.record_webhook(WebhookDelivery(TASK, "failed", 3, None, 3))  # a racing member giving up
    view = await rows.get(TASK)
    assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("delivered", 2, 200)


def test_the_readme_receiver_example_accepts_genuine_fresh_deliveries_only() -> None:
    section = README.read_text().split("### Completion webhooks", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    namespace: dict[str, object] = {}
    exec(example.group(1), namespace)  # the documented code itself, as a receiver would paste it
    verified = namespace["verified"]
    body = webhook_body(_outcome())
    headers = signed_headers(SECRET, "delivery-1", int(time.time()), body)
    assert verified(SECRET, headers, body)
    assert not verified("another secret", headers, body)
    assert not verified(SECRET, headers, body.replace(b"SUCCESS", b"FAILURE"))
    assert not verified(SECRET, signed_headers(SECRET, "delivery-1", int(time.time()) - 301, body), body)  # stale
    assert not verified(SECRET, {}, body)


async def test_the_webhook_waits_briefly_for_the_row_to_show_the_outcome() -> None:
    """A receiver told "done" fetches the thumbnail at once: the projector, reading the same outcome, gets a moment."""
    rows, receiver, paused = await _rows(), Receiver(), []

    async def projector_catches_up(seconds: float) -> None:
        paused.append(seconds)
        if len(paused) == 3:
            await rows.apply(project(_outcome()))

    await notify(_outcome(), {}, rows, receiver, _secret(SECRET), POLICY, now=lambda: NOW, pause=projector_catches_up)
    assert len(paused) == 3 and len(receiver.posts) == 1
    # A projector far behind does not hold the webhook up for long.
    waited: list[float] = []

    async def projector_stays_behind(seconds: float) -> None:
        waited.append(seconds)

    behind = Receiver()
    await notify(_outcome(), {}, await _rows(), behind, _secret(SECRET), POLICY, now=lambda: NOW, pause=projector_stays_behind)
    assert 1.0 <= sum(waited) <= 2.01 and len(behind.posts) == 1
