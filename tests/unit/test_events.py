"""The code's events and the published schemas cannot drift."""
import base64
import hashlib
import json

import jsonschema
import pytest
from referencing import Registry, Resource

from services.common.events import (
    DLQ_MAX_ORIGINAL_BYTES,
    EVENT_HEADER,
    decode,
    encode,
    encode_dead_letter,
    schema_documents,
    schema_examples,
)
from services.common.model import (
    Completed,
    Event,
    EventError,
    Failed,
    Fetched,
    Hashed,
    Record,
    Rendered,
    Rendition,
    Requested,
)
from services.projector.core import project
from services.replay.core import parse_dead_letter

TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"
SHA = "ef" * 32


def _registry() -> Registry:
    schemas = schema_documents().values()
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)


def _schema(name: str) -> dict:
    return schema_documents()[name]


COVER = Rendition(200, 200, "webp", 80, fit="cover", gravity="smart")
AUTO_PAD = Rendition(64, 64, "auto", fit="pad", background="00000080", enlarge=True)

PRODUCED = [
    Event(TASK, Requested("http://127.0.0.1/a.jpg"), "api"),
    Event(TASK, Requested("https://example.test/b.png", Rendition(300, 200, "webp", 70)), "api"),
    Event(TASK, Requested("https://example.test/c.jpg", callback_url="https://hooks.example.test/t", owner="shop-1"), "api"),
    Event(TASK, Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", b"\xff\xd8\xff"), "fetcher"),
    Event(TASK, Hashed("http://127.0.0.1/a.jpg", SHA, "image/jpeg", 3), "fetcher"),
    Event(TASK, Completed(SHA, Rendition(), 1, "image/jpeg", 100, 75, 3000, True), "resizer"),
    Event(TASK, Failed("fetcher", "SOURCE_TIMEOUT", "slow", 4), "fetcher"),
    Event(TASK, Requested("https://example.test/d.jpg", COVER, more_renditions=(Rendition(), AUTO_PAD)), "api"),
    Event(TASK, Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", b"\xff\xd8\xff", Rendition(), (COVER,)), "fetcher"),
    Event(TASK, Completed.of(SHA, [Rendered(Rendition(), "image/jpeg", 100, 75, 3000, False),
                                   Rendered(AUTO_PAD, "image/jpeg", 64, 64, 900, True)], 2), "resizer"),
]


@pytest.mark.parametrize("event", PRODUCED, ids=lambda e: e.type)
def test_every_produced_event_validates_against_its_schema_file(event: Event) -> None:
    record = encode(event)
    headers = dict(record.headers)
    document = json.loads(headers.get(EVENT_HEADER, record.value))
    jsonschema.Draft202012Validator(_schema(f"{event.type}.v{event.version}.json"), registry=_registry()).validate(document)
    assert decode(record.value, record.headers) == event


@pytest.mark.parametrize("renditions,version", [
    ((Rendition(),), 1),
    ((Rendition(640, 480, "avif", 60),), 1),  # new values of old fields keep v1 (avif was added in place)
    ((Rendition(), Rendition(200, 200)), 2),
    ((Rendition(fit="pad"),), 2),
    ((Rendition(format="auto"),), 2),
    ((Rendition(enlarge=True),), 2),
])
def test_a_request_is_written_in_the_oldest_version_that_can_say_it(renditions: tuple, version: int) -> None:
    requested = Event(TASK, Requested("http://127.0.0.1/a.jpg", renditions[0], more_renditions=renditions[1:]), "api")
    document = json.loads(encode(requested).value)
    assert document["version"] == version
    if version == 1:  # exactly what a reader of v1 knows: it renders what was asked
        assert set(document["payload"]["rendition"]) == {"width", "height", "format", "quality"}
    else:  # a v1 reader has no schema for it: it dead-letters the record instead of rendering the wrong thing
        assert [Rendition(**r) for r in document["payload"]["renditions"]] == list(renditions)


def test_a_plain_rendition_keeps_the_dedupe_key_it_had_before_fit_modes() -> None:
    assert Rendition().key(1) == "100x100.jpeg.q85.r1"
    assert Rendition(50, 60, "png", 90, "cover", "north", "ff0000", True).key(3) == "50x60.png.q90.r3.cover.g-north.bg-ff0000.up"


def test_gravity_without_cover_violates_the_rendition_schema() -> None:
    document = json.loads(encode(Event(TASK, Requested("http://127.0.0.1/a.jpg", COVER), "api")).value)
    document["payload"]["renditions"][0]["fit"] = "pad"
    with pytest.raises(EventError, match="schema violation at payload/renditions/0"):
        decode(json.dumps(document).encode())


def test_a_fetched_event_carries_the_image_as_the_record_value() -> None:
    image = bytes(range(256)) * 40
    record = encode(Event(TASK, Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", image), "fetcher"))
    assert record.value == image
    assert json.loads(dict(record.headers)[EVENT_HEADER])["payload"]["image_size"] == len(image)


def test_the_inline_base64_fetched_event_of_version_1_is_still_read() -> None:
    example = next(e for name, e in schema_examples() if name == "thumbnail.fetched.v1.json")
    event = decode(json.dumps(example).encode())
    assert event.payload.image == base64.b64decode(example["payload"]["image_base64"])


@pytest.mark.parametrize(
    "value,header,reason",
    [
        (b"\xff\xd8" * 10, None, "not JSON"),  # an image without its event header
        (b"\xff\xd8" * 10, b"{", "not JSON"),
        (b"\xff\xd8" * 9, "size", "image_size 20"),  # truncated value
        (b"", "size", "image_size 20"),
        (b"{}", "requested", "only thumbnail.fetched v2"),  # other events travel in the value
    ],
)
def test_a_fetched_record_whose_value_and_header_disagree_is_rejected(value: bytes, header: object, reason: str) -> None:
    fetched = encode(Event(TASK, Fetched("http://127.0.0.1/a.jpg", SHA, "image/jpeg", b"\xff\xd8" * 10), "fetcher"))
    requested = encode(Event(TASK, Requested("http://127.0.0.1/a.jpg"), "api"))
    carried = {"size": dict(fetched.headers)[EVENT_HEADER], "requested": requested.value}.get(header, header)  # type: ignore[arg-type]
    headers = [] if carried is None else [(EVENT_HEADER, carried)]
    with pytest.raises(EventError, match=reason):
        decode(value, headers)


@pytest.mark.parametrize("name,example", schema_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_schema_example_parses_through_the_code(name: str, example: dict) -> None:
    raw = json.dumps(example).encode()
    if name == "thumbnail.dlq.v1.json":
        jsonschema.Draft202012Validator(_schema(name)).validate(example)
        return
    if example["type"] == "thumbnail.fetched" and example["version"] >= 2:
        event = decode(b"\0" * example["payload"]["image_size"], [(EVENT_HEADER, raw)])
    else:
        event = decode(raw)
    assert event.type == example["type"] and event.task_id == example["task_id"]


def test_dead_letter_record_validates_against_its_schema() -> None:
    record = encode_dead_letter(reason="not JSON", stage="fetcher", topic="thumbnail.requested", partition=1,
                                offset=9, key=None, value=b"garbage", headers=[("h", b"v"), ("n", None)])
    document = json.loads(record)
    jsonschema.Draft202012Validator(_schema("thumbnail.dlq.v1.json")).validate(document)
    assert base64.b64decode(document["original_value_base64"]) == b"garbage"


def test_a_value_too_large_for_the_topic_is_left_out_of_its_dead_letter() -> None:
    huge = b"\x00" * (DLQ_MAX_ORIGINAL_BYTES + 1)  # base64 would take the letter past the topic's 32 MiB
    record = encode_dead_letter(reason="not JSON", stage="fetcher", topic="thumbnail.requested", partition=0,
                                offset=9, key=b"k", value=huge, headers=[])
    document = json.loads(record)
    jsonschema.Draft202012Validator(_schema("thumbnail.dlq.v1.json")).validate(document)
    assert len(record) < 4096 and document["original_value_base64"] == ""
    assert document["original_value_omitted"] == {"size": len(huge), "sha256": hashlib.sha256(huge).hexdigest()}
    # ... and a redrive leaves it alone instead of sending an empty record back
    assert parse_dead_letter(Record("p.thumbnail.dlq", 0, 0, 0, b"k", record)) is None


def test_minimal_external_request_gets_defaults_and_extra_fields_are_ignored() -> None:
    raw = json.dumps({
        "event_id": "0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01", "type": "thumbnail.requested", "version": 1,
        "task_id": TASK, "payload": {"source_url": "http://127.0.0.1/x.jpg", "colour": "blue"}, "extra": 1,
    }).encode()
    event = decode(raw)
    assert event.payload == Requested("http://127.0.0.1/x.jpg", Rendition(100, 100, "jpeg", 85))
    assert b"callback_url" not in encode(event).value and b"owner" not in encode(event).value  # unset: left out


def test_a_request_with_a_callback_and_an_owner_round_trips_and_projects_them() -> None:
    event = Event(TASK, Requested("http://127.0.0.1/x.jpg", callback_url="https://hooks.example.test/t", owner="a-1"), "api")
    assert decode(encode(event).value).payload == event.payload
    columns = project(event).columns
    assert columns["callback_url"] == "https://hooks.example.test/t" and columns["owner"] == "a-1"
    assert "owner" not in project(Event(TASK, Requested("http://127.0.0.1/x.jpg"), "api")).columns


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"", "empty"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"type":"thumbnail.requested","version":9}', "unknown event type/version"),
        (b'{"type":"thumbnail.exploded","version":1}', "unknown event type/version"),
        (json.dumps({"event_id": "x", "type": "thumbnail.requested", "version": 1, "task_id": TASK,
                     "payload": {"source_url": "http://a/"}}).encode(), "event_id"),
        (json.dumps({"event_id": "0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01", "type": "thumbnail.requested", "version": 1,
                     "task_id": TASK, "payload": {"source_url": "http://a/", "rendition": {"width": 0}}}).encode(), "width"),
        (json.dumps({"event_id": "0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01", "type": "thumbnail.fetched", "version": 1,
                     "task_id": TASK, "payload": {"source_url": "http://a/", "source_sha256": SHA,
                                                  "media_type": "image/png", "image_base64": "!!!"}}).encode(), "base64"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        decode(raw)
