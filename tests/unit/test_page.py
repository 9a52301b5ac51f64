"""The page at /: served as HTML, every asset it references served by the app itself, nothing from elsewhere."""
from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from starlette.testclient import TestClient

from services.api.app import PAGE, create_app
from services.common.settings import Settings
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails

REFERENCE_ATTRIBUTES = {"src", "href", "action", "srcset", "poster", "data"}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(), publisher=FakePublisher(), tasks=FakeTasks(), thumbnails=FakeThumbnails(),
                     idempotency_keys=FakeIdempotencyKeys())
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tags(client: TestClient) -> list[tuple[str, dict[str, str]]]:
    parser = Tags()
    parser.feed(client.get("/").text)
    return parser.tags


def test_the_page_is_served_at_the_root_as_html(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text.lstrip().lower().startswith("<!doctype html>")


def test_every_referenced_asset_is_served_by_the_app(client: TestClient, tags: list[tuple[str, dict[str, str]]]) -> None:
    assets = [attrs[name] for tag, attrs in tags for name in ("src", "href")
              if tag in ("script", "link", "img") and not attrs.get(name, "data:").startswith("data:")]
    assert set(assets) == {"/page/page.css", "/page/page.js"}
    types = {".css": "text/css", ".js": "javascript"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert types[asset[asset.rfind("."):]] in response.headers["content-type"], asset


def test_nothing_is_loaded_from_another_host(tags: list[tuple[str, dict[str, str]]]) -> None:
    for tag, attrs in tags:
        for name in REFERENCE_ATTRIBUTES & attrs.keys():
            local = attrs[name].startswith("/") and not attrs[name].startswith("//")
            assert local or attrs[name].startswith("data:"), (tag, name, attrs[name])
        # Only a placeholder may show a full URL: it is an example for the reader, never loaded.
        assert not any("//" in value for name, value in attrs.items() if name != "placeholder"), (tag, attrs)
    css, js = (PAGE / "page.css").read_text(), (PAGE / "page.js").read_text()
    assert not re.search(r"@import|url\(", css)
    assert not re.search(r"""["'`](https?:)?//""", js), "the script may only call the app's own paths"


def test_inputs_are_labelled_and_the_status_is_announced(tags: list[tuple[str, dict[str, str]]]) -> None:
    labelled = {attrs["for"] for tag, attrs in tags if tag == "label"}
    controls = [attrs["id"] for tag, attrs in tags if tag in ("input", "select", "textarea")]
    assert controls and set(controls) <= labelled
    assert any(attrs.get("id") == "status" and attrs.get("aria-live") == "polite" for _, attrs in tags)
    assert all("alt" in attrs for tag, attrs in tags if tag == "img")


def test_page_requests_are_counted_under_their_route(client: TestClient) -> None:
    client.get("/")
    client.get("/page/page.js")
    metrics = client.get("/metrics").text
    assert 'thumbs_http_requests_total{method="GET",route="/",status="200"}' in metrics
    assert 'thumbs_http_requests_total{method="GET",route="/page",status="200"}' in metrics
