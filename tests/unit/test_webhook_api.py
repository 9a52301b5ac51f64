"""callback_url at POST /thumbnail (refused unless it can be signed and reaches a public address) and the webhook's
delivery in GET /thumbnail, with in-memory ports and a DNS stub: no lookup or connection leaves the process."""
import asyncio
import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from starlette.testclient import TestClient

from services.api.app import create_app
from services.api.callbacks import CallbackCheck
from services.api.validation import ApiError
from services.common.model import WebhookDelivery
from services.common.settings import Settings
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails

IMAGE = "http://127.0.0.2:8000/a.jpg"
SETTINGS = Settings(webhook_secret="s3cret", fetch_allow_networks=(ipaddress.ip_network("127.0.0.2/32"),))


class StubResolver(AbstractResolver):
    """DNS as the test says it is; records every lookup. A name it does not know does not resolve."""

    def __init__(self, answers: dict[str, list[str]], delay: float = 0.0) -> None:
        self.answers, self.delay = answers, delay
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls.append(host)
        await asyncio.sleep(self.delay)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in self.answers[host]]

    async def close(self) -> None:
        pass


DNS = {"hooks.example.com": ["93.184.215.14"], "rebind.example.com": ["93.184.215.14", "10.0.0.7"],
       "metadata.example.com": ["169.254.169.254"], "v6.example.com": ["::1"]}


@pytest.fixture
def resolver() -> StubResolver:
    return StubResolver(DNS)


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def tasks() -> FakeTasks:
    return FakeTasks()


def _client(settings: Settings, publisher: FakePublisher, tasks: FakeTasks, resolver: StubResolver) -> TestClient:
    return TestClient(create_app(settings, publisher=publisher, tasks=tasks, thumbnails=FakeThumbnails(),
                                 idempotency_keys=FakeIdempotencyKeys(), callback_resolver=resolver))


@pytest.fixture
def client(publisher: FakePublisher, tasks: FakeTasks, resolver: StubResolver) -> TestClient:
    with _client(SETTINGS, publisher, tasks, resolver) as test_client:
        yield test_client


def test_a_callback_url_rides_in_the_request_and_get_shows_the_webhook(client: TestClient, publisher, tasks) -> None:
    response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://hooks.example.com/t?x=1"})
    assert response.status_code == 202, response.text
    [event] = publisher.events
    assert event.payload.callback_url == "https://hooks.example.com/t?x=1"
    task_id = response.json()["task_id"]
    body = client.get("/thumbnail", params={"task_id": task_id}).json()
    assert body["webhook"] == {"state": "pending", "attempts": 0, "last_status": None}
    asyncio.run(tasks.record_webhook(WebhookDelivery(task_id, "delivered", 3, 200, 0)))
    assert client.get("/thumbnail", params={"task_id": task_id}).json()["webhook"] == {
        "state": "delivered", "attempts": 3, "last_status": 200}


def test_a_task_without_callback_shows_no_webhook(client: TestClient) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": IMAGE}).json()["task_id"]
    assert "webhook" not in client.get("/thumbnail", params={"task_id": task_id}).json()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/", "http://[::1]/",
    "http://0x7f000001/", "http://2130706433/", "http://0.0.0.0/", "http://[::ffff:192.168.0.1]/",
    "http://metadata.example.com/", "http://rebind.example.com/", "http://v6.example.com/",
])
def test_a_callback_to_a_non_public_address_is_refused_at_post(url: str, client: TestClient, publisher, resolver) -> None:
    response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": url})
    assert response.status_code == 422 and response.json()["error"]["code"] == "CALLBACK_FORBIDDEN_ADDRESS"
    assert publisher.events == []
    assert "10.0.0.7" not in response.text and "169.254" not in response.json()["message"]
    assert resolver.calls == ([] if ".example.com" not in url else [url.split("/")[2]])  # literals are never looked up


def test_the_allow_list_of_the_fetcher_opens_callbacks_too(client: TestClient) -> None:
    response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "http://127.0.0.2:9000/hook"})
    assert response.status_code == 202


def test_a_host_that_does_not_resolve_is_refused(client: TestClient) -> None:
    response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://nowhere.example.com/"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "CALLBACK_UNRESOLVABLE"


@pytest.mark.parametrize("callback", [
    None, 42, "", "ftp://hooks.example.com/", "hooks.example.com/x", "http:///x", "http://a b/", "http://x/a\u0000b",
    "https://user:pw@hooks.example.com/", "http://hooks.example.com/" + "x" * 2048,
])
def test_malformed_callback_urls_are_invalid_requests(callback: object, client: TestClient, publisher) -> None:
    response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": callback})
    assert response.status_code == 422 and response.json()["error"]["code"] == "INVALID_REQUEST", response.text
    assert "callback_url" in response.json()["message"] and publisher.events == []


def test_without_a_signing_secret_callbacks_are_refused(publisher, tasks, resolver) -> None:
    with _client(Settings(), publisher, tasks, resolver) as client:
        response = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://hooks.example.com/"})
        assert response.status_code == 422 and response.json()["error"]["code"] == "WEBHOOKS_DISABLED"
        assert client.post("/thumbnail", json={"source_image_url": IMAGE}).status_code == 202
    assert resolver.calls == [] and len(publisher.events) == 1


def test_an_idempotency_key_reused_with_another_callback_is_a_conflict(client: TestClient) -> None:
    headers = {"Idempotency-Key": "key-1"}
    first = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://hooks.example.com/a"}, headers=headers)
    again = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://hooks.example.com/a"}, headers=headers)
    other = client.post("/thumbnail", json={"source_image_url": IMAGE, "callback_url": "https://hooks.example.com/b"}, headers=headers)
    assert first.status_code == again.status_code == 202 and again.json() == first.json()
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_slow_dns_at_post_lets_the_request_through_for_the_notifier_to_check() -> None:
    check = CallbackCheck(allow=(), resolver=StubResolver(DNS, delay=5.0), lookup_timeout=0.05)
    await check.check("https://hooks.example.com/", signable=True)  # accepted: the notifier checks the address when it connects
    with pytest.raises(ApiError) as refused:
        await CallbackCheck(allow=(), resolver=StubResolver(DNS), lookup_timeout=0.05).check("http://127.0.0.1/", signable=True)
    assert refused.value.code == "CALLBACK_FORBIDDEN_ADDRESS"
