"""The published bad-input table (docs/bad-input.md), row by row, through the real pipeline.

Every row is served from 127.0.0.2 (the only allowed network here) or names a loopback address
the fetcher must refuse; no traffic leaves the machine.
"""
from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from PIL import Image

from tests.unit import samples

from .stack import ImageServer, free_port, running_stack
from .test_pipeline import photo

pytestmark = pytest.mark.integration

MAX_BYTES = 1024 * 1024


def _slow(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(8):  # one byte a second: never silent for the read timeout, always over the total
        try:
            handler.wfile.write(b"\xff")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.9)


def _endless(handler: BaseHTTPRequestHandler) -> None:
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"\xff" * 65536
    for _ in range(400):  # bounded: 25 MiB at most, far past the 1 MiB cap
        try:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            return


def _short(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "5000")
    handler.end_headers()
    handler.wfile.write(samples.encode(Image.new("RGB", (4, 4)), "JPEG")[:100])
    handler.close_connection = True


def _oversized_declared(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(MAX_BYTES * 50))
    handler.end_headers()
    handler.close_connection = True


@dataclass(frozen=True)
class Row:
    """One line of the bad-input table: how the origin behaves and the outcome users see."""

    name: str
    url: Callable[[ImageServer], str]
    status: str
    code: str | None = None
    size: tuple[int, int] | None = None


def served(body: bytes, content_type: str = "image/jpeg", status: int = 200) -> Callable[[ImageServer], str]:
    def url(images: ImageServer) -> str:
        return images.add(f"/rows/{id(body)}-{status}", body, content_type, status)
    return url


def loopback(host: str) -> Callable[[ImageServer], str]:
    def url(images: ImageServer) -> str:
        port = images.base.rsplit(":", 1)[1]
        images.add("/ok.jpg", photo(64, 48, seed=9))
        return f"http://{host}:{port}/ok.jpg"
    return url


def redirect_to(target: Callable[[ImageServer], str], hops: int = 1) -> Callable[[ImageServer], str]:
    def url(images: ImageServer) -> str:
        location = target(images)
        for hop in range(hops):
            location = images.redirect(f"/hop/{id(target)}/{hops}/{hop}", location)
        return location
    return url


def behaving(behaviour: Callable[[BaseHTTPRequestHandler], None]) -> Callable[[ImageServer], str]:
    return lambda images: images.behave(f"/behave/{behaviour.__name__}", behaviour)


def refused_port(images: ImageServer) -> str:
    return f"http://127.0.0.2:{free_port('127.0.0.2')}/nothing-listens.jpg"


def exif_rotated() -> bytes:
    image = Image.new("RGB", (200, 100), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    return samples.encode(image, "JPEG", exif=exif.tobytes())


def palette_transparent() -> bytes:
    image = Image.new("P", (300, 150), 1)
    return samples.encode(image, "PNG", transparency=1)


ok = photo(64, 48, seed=9)
ROWS = [
    # where the fetcher may connect
    Row("loopback 127.0.0.1 outside the allow-list", loopback("127.0.0.1"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("localhost", loopback("localhost"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("IPv6 loopback [::1]", loopback("[::1]"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("unspecified 0.0.0.0", loopback("0.0.0.0"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("decimal 2130706433", loopback("2130706433"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("hex 0x7f000001", loopback("0x7f000001"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("octal 0177.0.0.1", loopback("0177.0.0.1"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("short form 127.1", loopback("127.1"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("IPv4-mapped [::ffff:127.0.0.1]", loopback("[::ffff:127.0.0.1]"), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("IPv4-mapped [::ffff:127.0.0.2] (allowed)", loopback("[::ffff:127.0.0.2]"), "SUCCESS", size=(64, 48)),
    Row("redirect to 127.0.0.1", redirect_to(loopback("127.0.0.1")), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("redirect to localhost", redirect_to(loopback("localhost")), "FAILURE", "SOURCE_FORBIDDEN_ADDRESS"),
    Row("redirect to file://", redirect_to(lambda _i: "file:///etc/passwd"), "FAILURE", "SOURCE_BAD_REDIRECT"),
    Row("5 redirects", redirect_to(served(ok), hops=5), "SUCCESS", size=(64, 48)),
    Row("6 redirects", redirect_to(served(ok), hops=6), "FAILURE", "SOURCE_TOO_MANY_REDIRECTS"),
    # how the origin answers
    Row("HTTP 404", served(b"gone", "text/plain", 404), "FAILURE", "SOURCE_HTTP_ERROR"),
    Row("HTTP 500 (retried, then failed)", served(b"oops", "text/plain", 500), "FAILURE", "SOURCE_HTTP_ERROR"),
    Row("HTTP 429 (retried, then failed)", served(b"slow down", "text/plain", 429), "FAILURE", "SOURCE_HTTP_ERROR"),
    Row("connection refused (retried)", refused_port, "FAILURE", "SOURCE_UNREACHABLE"),
    Row("slow-loris origin", behaving(_slow), "FAILURE", "SOURCE_TIMEOUT"),
    Row("Content-Length over the cap", behaving(_oversized_declared), "FAILURE", "SOURCE_TOO_LARGE"),
    Row("endless chunked body", behaving(_endless), "FAILURE", "SOURCE_TOO_LARGE"),
    Row("body shorter than Content-Length", behaving(_short), "FAILURE", "SOURCE_UNREACHABLE"),
    Row("zero-byte body", served(b""), "FAILURE", "SOURCE_EMPTY"),
    # what the bytes are
    Row("HTML page served as image/jpeg", served(b"<!DOCTYPE html><html><body>hi</body></html>"), "FAILURE", "NOT_AN_IMAGE"),
    Row("SVG", served(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/svg+xml"), "FAILURE", "UNSUPPORTED_FORMAT"),
    Row("PDF served as image/png", served(b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "image/png"), "FAILURE", "NOT_AN_IMAGE"),
    Row("JSON", served(b'{"image": false}', "application/json"), "FAILURE", "NOT_AN_IMAGE"),
    Row("truncated JPEG", served(photo(400, 300, seed=10)[:1500]), "FAILURE", "IMAGE_CORRUPT"),
    Row("PNG bomb declaring 50000x50000", served(samples.png_declaring(50000, 50000), "image/png"), "FAILURE", "IMAGE_TOO_MANY_PIXELS"),
    Row("JPEG declaring 60000x60000", served(samples.jpeg_declaring(60000, 60000)), "FAILURE", "IMAGE_TOO_MANY_PIXELS"),
    Row("GIF with 3000 frames", served(samples.gif_frames(3000), "image/gif"), "FAILURE", "IMAGE_TOO_MANY_FRAMES"),
    Row("1x30000 image", served(samples.encode(Image.new("L", (1, 30000), 128), "PNG"), "image/png"), "SUCCESS", size=(1, 100)),
    Row("CMYK JPEG", served(samples.encode(Image.new("CMYK", (300, 200), (0, 255, 255, 0)), "JPEG")), "SUCCESS", size=(100, 67)),
    Row("16-bit PNG", served(samples.png_rgb16((320, 160), (65535, 0, 0)), "image/png"), "SUCCESS", size=(100, 50)),
    Row("palette PNG with transparency", served(palette_transparent(), "image/png"), "SUCCESS", size=(100, 50)),
    Row("RGBA PNG", served(samples.encode(Image.new("RGBA", (100, 400), (0, 0, 0, 0)), "PNG"), "image/png"), "SUCCESS", size=(25, 100)),
    Row("EXIF orientation 6", served(exif_rotated()), "SUCCESS", size=(50, 100)),
    Row("animated GIF (first frame)", served(samples.gif_frames(5), "image/gif"), "SUCCESS", size=(1, 1)),
    Row("WebP", served(samples.encode(Image.new("RGB", (300, 300), "green"), "WEBP"), "image/webp"), "SUCCESS", size=(100, 100)),
    Row("BMP", served(samples.encode(Image.new("RGB", (50, 100), "green"), "BMP"), "image/bmp"), "SUCCESS", size=(50, 100)),
    Row("TIFF", served(samples.encode(Image.new("RGB", (400, 100), "green"), "TIFF"), "image/tiff"), "SUCCESS", size=(100, 25)),
    Row("AVIF", served(samples.encode(Image.new("RGB", (200, 400), "green"), "AVIF"), "image/avif"), "SUCCESS", size=(50, 100)),
]


@pytest.fixture(scope="module")
def outcomes(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    images = ImageServer()
    try:
        with running_stack(
            kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("bad-input"),
            FETCH_TOTAL_TIMEOUT="3", FETCH_READ_TIMEOUT="2", FETCH_MAX_ATTEMPTS="2", FETCH_RETRY_BASE_SECONDS="0.2",
            FETCH_MAX_BYTES=str(MAX_BYTES), MAX_FRAMES="100",
        ) as stack, httpx.Client(base_url=stack.api, timeout=10) as client:
            submitted = {}
            for row in ROWS:
                response = client.post("/thumbnail", json={"source_image_url": row.url(images)})
                assert response.status_code == 202, (row.name, response.text)
                submitted[row.name] = response.json()["task_id"]
            yield _poll_all(client, submitted, timeout=120)
    finally:
        images.close()


def _poll_all(client: httpx.Client, submitted: dict[str, str], timeout: float) -> dict[str, dict]:
    results: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(submitted) and time.monotonic() < deadline:
        for name, task_id in submitted.items():
            if name not in results:
                body = client.get("/thumbnail", params={"task_id": task_id}).json()
                if body["status"] in ("SUCCESS", "FAILURE"):
                    results[name] = body
        time.sleep(0.3)
    return results


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_row(row: Row, outcomes: dict[str, dict]) -> None:
    assert row.name in outcomes, f"{row.name}: never reached SUCCESS or FAILURE"
    body = outcomes[row.name]
    assert body["status"] == row.status, body
    if row.code:
        assert body["error"]["code"] == row.code and body["error"]["message"], body
    if row.size:
        image = Image.open(io.BytesIO(base64.b64decode(body["base64_thumbnail_data"])))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == row.size, (image.size, row.size)
