"""`thumbs dlq list` and `show`: lines and documents from dead-letter records, without Kafka."""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.cli import build_parser
from services.common.events import EVENT_HEADER, encode, encode_dead_letter
from services.common.model import Event, Fetched, Record, Requested
from services.replay.core import ReplayError, epoch_ms, parse_dead_letter, read_dead_letter
from services.replay.dlq import (
    Entry,
    details,
    entry_of,
    iso_ms,
    latest,
    line,
    matching,
    parse_position,
    preview,
    rendered,
    summary,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
TASK = "7f9c2b1e-4a5d-4c3b-9e8f-0a1b2c3d4e5f"
SOURCE = "p.thumbnail.requested"


def requested() -> Event:
    return Event(TASK, Requested("http://img.example/a.jpg"), "api", event_id="0b6d3f5e-2f1a-4c1e-9a57-8c1f0d6a9e01",
                 occurred_at="2026-11-28T09:59:00.000000Z")


def dlq_record(value: bytes | None, *, stage: str = "projector", reason: str = "unexpected TypeError: bad ttl",
               headers: tuple[tuple[str, bytes], ...] = (("origin", b"api"),), key: bytes | None = TASK.encode(),
               partition: int = 0, offset: int = 0, at: datetime = T0) -> Record:
    raw = encode_dead_letter(reason=reason, stage=stage, topic=SOURCE, partition=1, offset=7,
                             key=key, value=value, headers=list(headers))
    return Record("p.thumbnail.dlq", partition, offset, epoch_ms(at), key, raw, headers)


def test_a_list_line_names_position_time_stage_origin_task_and_reason() -> None:
    entry = entry_of(dlq_record(encode(requested()).value, partition=2, offset=17))
    assert line(entry) == (f"2:17     2026-11-28T10:00:00.000Z  projector p.thumbnail.requested[1]@7  task {TASK}  "
                           "unexpected TypeError: bad ttl")


def test_a_list_line_says_what_it_cannot_read() -> None:
    assert line(entry_of(dlq_record(b"not json", stage="fetcher", reason="not JSON:\n  Expecting value"))).endswith(
        "fetcher   p.thumbnail.requested[1]@7  task -  not JSON: Expecting value")  # one line, whatever the reason holds
    unreadable = entry_of(Record("p.thumbnail.dlq", 0, 3, epoch_ms(T0), None, b"[]"))
    assert line(unreadable) == "0:3      2026-11-28T10:00:00.000Z  unreadable dead letter (2 bytes; not schemas/thumbnail.dlq.v1.json)"


def test_a_long_reason_is_cut_in_the_list_only() -> None:
    entry = entry_of(dlq_record(b"x", reason="schema violation " + "y" * 300))
    assert line(entry).endswith("y…") and len(line(entry).split("task -  ")[1]) == 120
    assert details(entry)["reason"] == "schema violation " + "y" * 300


def test_matching_filters_by_stage_reason_any_case_and_time() -> None:
    entries = [
        entry_of(dlq_record(b"a", stage="fetcher", reason="not JSON", offset=0)),
        entry_of(dlq_record(b"b", reason="unexpected TypeError", offset=1, at=T0 - timedelta(hours=1))),
        entry_of(dlq_record(b"c", reason="unexpected TypeError", offset=2)),
        entry_of(Record("p.thumbnail.dlq", 0, 3, epoch_ms(T0), None, b"garbage")),
    ]
    assert [e.offset for e in matching(entries)] == [0, 1, 2, 3]
    assert [e.offset for e in matching(entries, stage="projector")] == [1, 2]
    assert [e.offset for e in matching(entries, reason="typeerror")] == [1, 2]
    assert [e.offset for e in matching(entries, since_ms=epoch_ms(T0))] == [0, 2, 3]


def test_latest_keeps_the_most_recent_oldest_first_and_counts_them_all() -> None:
    entries = [Entry(p, o, epoch_ms(T0) + ms, 1, None) for p, o, ms in [(0, 0, 50), (1, 0, 10), (0, 1, 70), (1, 1, 30)]]
    shown, count = latest(iter(entries), 2)
    assert [e.position for e in shown] == ["0:0", "0:1"] and count == 4
    assert latest([], 5) == ([], 0)


@pytest.mark.parametrize(("text", "position"), [("3:1042", (3, 1042)), ("1042", (None, 1042)), (" 0:0 ", (0, 0))])
def test_parse_position(text: str, position: tuple[int | None, int]) -> None:
    assert parse_position(text) == position


@pytest.mark.parametrize("text", ["", "x", "1:", "1:2:3", "-1", "0:-4", "-2:5"])
def test_parse_position_refuses_anything_else(text: str) -> None:
    with pytest.raises(ReplayError):
        parse_position(text)


def test_details_of_an_event_carry_its_json_and_the_original_record() -> None:
    value = encode(requested()).value
    doc = details(entry_of(dlq_record(value, offset=4)))
    assert doc["original_key_base64"] == "N2Y5YzJiMWUtNGE1ZC00YzNiLTllOGYtMGExYjJjM2Q0ZTVm"
    assert doc["original_headers"] == [["origin", "YXBp"]]
    assert doc["original_value"] == {
        "size": len(value), "sha256": hashlib.sha256(value).hexdigest(), "event": json.loads(value), "task_id": TASK,
    }
    assert (doc["task_id"], doc["source_topic"], doc["source_partition"], doc["source_offset"]) == (TASK, SOURCE, 1, 7)
    lines = rendered(doc)
    assert lines[:7] == [
        "dead letter 0:4, written 2026-11-28T10:00:00.000Z",
        "reason:  unexpected TypeError: bad ttl",
        "stage:   projector",
        "origin:  p.thumbnail.requested[1]@7",
        f"key:     {TASK}",
        "headers:",
        "  origin: api",
    ]
    assert lines[7].startswith(f"value:   thumbnail.requested v1 event of task {TASK}, {len(value)} bytes, sha256 ")
    assert json.loads("\n".join(lines[8:])) == json.loads(value)


def test_details_of_a_fetched_v2_event_show_the_header_json_and_the_image_size() -> None:
    image = b"\xff\xd8" + bytes(500)
    event = Event(TASK, Fetched("http://img.example/a.jpg", hashlib.sha256(image).hexdigest(), "image/jpeg", image), "fetcher")
    encoded = encode(event)
    value = details(entry_of(dlq_record(encoded.value, headers=encoded.headers)))["original_value"]
    assert value["event"] == json.loads(dict(encoded.headers)[EVENT_HEADER]) and value["size"] == len(image)


def test_details_of_a_value_that_is_no_event_give_size_hash_and_a_printable_preview() -> None:
    raw = b"\x00\x01not json \xe2\x9c\x93 at all"
    doc = details(entry_of(dlq_record(raw, key=None, headers=())))
    assert doc["original_value"] == {
        "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "event": None,
        "not_an_event": doc["original_value"]["not_an_event"], "preview": "..not json ✓ at all",
    }
    assert doc["original_value"]["not_an_event"].startswith("not JSON")
    lines = rendered(doc)
    assert "key:     (none)" in lines and "headers: (none)" in lines
    assert lines[-2].startswith("value:   not an event (not JSON") and lines[-1] == "preview: ..not json ✓ at all"


def test_binary_keys_and_headers_are_shown_as_base64() -> None:
    doc = details(entry_of(dlq_record(b"x", key=b"\xff\x00", headers=(("trace", b"\x01"), ("empty", b"")))))
    assert [text for text in rendered(doc) if text.startswith(("key:", "  "))][:3] == [
        "key:     base64:/wA=", "  trace: base64:AQ==", "  empty: (empty)",
    ]


def test_a_value_left_out_of_its_dead_letter_is_listed_and_shown_but_never_redriven() -> None:
    document = json.loads(encode_dead_letter(reason="not JSON", stage="fetcher", topic=SOURCE, partition=0, offset=1,
                                             key=None, value=b"", headers=[]))
    document["original_value_omitted"] = {"size": 25_000_000, "sha256": "ab" * 32}
    record = Record("p.thumbnail.dlq", 0, 5, epoch_ms(T0), None, json.dumps(document).encode())
    letter = read_dead_letter(record)
    assert letter is not None and letter.omitted is not None and letter.omitted.size == 25_000_000
    assert parse_dead_letter(record) is None
    doc = details(entry_of(record))
    assert doc["original_value"] == {"omitted": True, "size": 25_000_000, "sha256": "ab" * 32}
    assert rendered(doc)[-1] == f"value:   left out of the dead letter (too large): 25000000 bytes, sha256 {'ab' * 32}"


def test_an_unreadable_record_is_shown_as_such() -> None:
    doc = details(entry_of(Record("p.thumbnail.dlq", 1, 2, epoch_ms(T0), None, b"{}")))
    assert doc == summary(entry_of(Record("p.thumbnail.dlq", 1, 2, epoch_ms(T0), None, b"{}")))
    assert doc["readable"] is False
    assert rendered(doc)[1] == "unreadable: 2 bytes that are not a dead-letter record (schemas/thumbnail.dlq.v1.json)"


def test_preview_cuts_long_values_and_marks_the_cut() -> None:
    assert preview(b"a" * 200, chars=10) == "aaaaaaaaaa…"
    assert preview(b"short") == "short"


def test_iso_ms_is_exact_utc() -> None:
    assert iso_ms(1764325000123) == "2025-11-28T10:16:40.123Z"


def test_cli_parses_dlq_list_and_show() -> None:
    parser = build_parser()
    listed = parser.parse_args(["dlq", "list", "--stage", "fetcher", "--reason", "JSON", "--since", "2026-11-28T10:00:00Z"])
    assert (listed.limit, listed.stage, listed.reason, listed.since, listed.json) == (50, "fetcher", "JSON", epoch_ms(T0), False)
    assert parser.parse_args(["dlq", "list", "--limit", "5", "--json"]).limit == 5
    shown = parser.parse_args(["dlq", "show", "2:17", "--json"])
    assert (shown.position, shown.json) == ("2:17", True)
    for wrong in (["dlq", "list", "--limit", "0"], ["dlq", "list", "--since", "yesterday"], ["dlq", "show"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
