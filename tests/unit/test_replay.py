"""The replay commands' selection logic and argument parsing, without Kafka."""
from __future__ import annotations

import base64
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.cli import build_parser
from services.common.events import encode, encode_dead_letter
from services.common.model import Event, Record, Requested
from services.replay.core import (
    REDRIVE_HEADER,
    REPLAY_HEADER,
    ReplayError,
    Resend,
    RewindTarget,
    check_stage_topic,
    described,
    epoch_ms,
    parse_dead_letter,
    parse_time,
    redrive_targets,
    replayed,
    select,
    target_offset,
)
from services.replay.progress import Progress

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def requested(task_id: str | None = None) -> bytes:
    return encode(Event(task_id or str(uuid.uuid4()), Requested("http://img.example/a.jpg"), "test")).value


def record(value: bytes, at: datetime = T0, offset: int = 0, headers: tuple = (), topic: str = "p.thumbnail.requested") -> Record:
    return Record(topic, 0, offset, epoch_ms(at), b"key", value, headers)


def dead_letter(value: bytes, *, stage: str = "projector", reason: str = "unexpected TypeError: bad ttl",
                topic: str = "p.thumbnail.requested", offset: int = 7, at: datetime = T0) -> Record:
    raw = encode_dead_letter(reason=reason, stage=stage, topic=topic, partition=1, offset=offset,
                             key=b"task-key", value=value, headers=[("origin", b"api")])
    return Record("p.thumbnail.dlq", 0, offset, epoch_ms(at), b"task-key", raw, (("origin", b"api"),))


def test_parse_time_reads_zones_and_treats_naive_as_utc() -> None:
    assert parse_time("2026-11-28T10:00:00Z") == T0
    assert parse_time("2026-11-28T11:00:00+01:00") == T0
    assert parse_time("2026-11-28T10:00:00") == T0
    with pytest.raises(ReplayError, match="ISO 8601"):
        parse_time("yesterday")


def test_select_keeps_the_half_open_time_window() -> None:
    records = [record(requested(), T0 + timedelta(minutes=m), offset=m) for m in range(5)]
    chosen = select(records, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert [r.offset for r in chosen] == [1, 2]


def test_select_by_task_id_ignores_case_and_other_tasks() -> None:
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    records = [record(requested(mine), offset=0), record(requested(other), offset=1), record(requested(mine), offset=2)]
    assert [r.offset for r in select(records, task_ids=[mine.upper()])] == [0, 2]


def test_select_never_picks_records_the_stages_would_dead_letter() -> None:
    records = [record(b"not json", offset=0), record(b'{"type": "thumbnail.requested", "version": 9}', offset=1),
               record(requested(), offset=2)]
    assert [r.offset for r in select(records)] == [2]


def test_replayed_keeps_key_value_headers_and_stamps_once() -> None:
    original = record(requested(), headers=(("origin", b"api"), (REPLAY_HEADER, b"earlier")))
    resend = replayed(original, "2026-11-28T12:00:00Z")
    assert (resend.topic, resend.key, resend.value) == (original.topic, original.key, original.value)
    assert resend.headers == (("origin", b"api"), (REPLAY_HEADER, b"2026-11-28T12:00:00Z"))


def test_dead_letter_round_trips_the_original_record() -> None:
    value = requested()
    letter = parse_dead_letter(dead_letter(value))
    assert letter is not None
    assert (letter.key, letter.value, letter.headers) == (b"task-key", value, (("origin", b"api"),))
    assert (letter.stage, letter.source_topic, letter.partition, letter.offset) == ("projector", "p.thumbnail.requested", 1, 7)


def test_unreadable_dead_letters_are_skipped() -> None:
    assert parse_dead_letter(record(b"[]")) is None
    assert parse_dead_letter(record(json.dumps({"reason": "x"}).encode())) is None
    assert list(redrive_targets([record(b"not json")])) == []


def test_redrive_targets_filter_by_reason_stage_and_time() -> None:
    letters = [
        dead_letter(requested(), reason="unexpected TypeError: bad ttl", offset=1),
        dead_letter(requested(), reason="not JSON: Expecting value", stage="fetcher", offset=2),
        dead_letter(requested(), reason="unexpected TypeError: bad ttl", offset=3, at=T0 - timedelta(hours=1)),
    ]
    assert [t.value for t in redrive_targets(letters, "typeerror")] == [parse_dead_letter(letters[i]).value for i in (0, 2)]  # type: ignore[union-attr]
    assert len(list(redrive_targets(letters, stage="fetcher"))) == 1
    assert len(list(redrive_targets(letters, since=T0))) == 2


def test_redrive_sends_a_record_two_stages_rejected_once_to_its_source_topic() -> None:
    value = requested()
    letters = [dead_letter(value, stage="fetcher"), dead_letter(value, stage="projector")]
    targets = list(redrive_targets(letters, at="2026-11-28T12:00:00Z"))
    assert len(targets) == 1
    assert targets[0].topic == "p.thumbnail.requested" and targets[0].key == b"task-key" and targets[0].value == value
    assert targets[0].headers == (("origin", b"api"), (REDRIVE_HEADER, b"2026-11-28T12:00:00Z"))


def test_redrive_stays_inside_the_allowed_topics() -> None:
    letters = [dead_letter(requested(), topic="other.thumbnail.requested"), dead_letter(requested(), offset=9)]
    targets = list(redrive_targets(letters, allowed_topics=frozenset({"p.thumbnail.requested"})))
    assert [t.topic for t in targets] == ["p.thumbnail.requested"]


@pytest.mark.parametrize(
    ("target", "for_time", "expected"),
    [
        (RewindTarget("earliest"), None, 10),
        (RewindTarget("latest"), None, 50),
        (RewindTarget("offset", 3), None, 10),  # older than retention: clamp to the oldest record
        (RewindTarget("offset", 30), None, 30),
        (RewindTarget("offset", 99), None, 50),
        (RewindTarget("time", at=T0), 25, 25),
        (RewindTarget("time", at=T0), -1, 50),  # every record is older than the time: nothing to re-read
    ],
)
def test_target_offset(target: RewindTarget, for_time: int | None, expected: int) -> None:
    assert target_offset(target, 10, 50, for_time) == expected


def test_a_stage_is_only_rewound_on_a_topic_it_reads() -> None:
    check_stage_topic("resizer", "thumbnail.fetched")
    with pytest.raises(ReplayError, match="does not read thumbnail.requested"):
        check_stage_topic("resizer", "thumbnail.requested")


def test_progress_prints_at_most_once_a_second_and_sums_up() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress("republish", 10, out=out, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 0.25
        progress.read += 1
        progress.tick()
    progress.selected = progress.published = 6
    assert len(out.getvalue().splitlines()) == 2  # at 1.0 s and 2.0 s
    assert "5/10 records read" in out.getvalue().splitlines()[0]
    assert progress.summary() == "republish: selected 6 of 10 records read, published 6, skipped 4, in 2.2 s"


def test_cli_parses_each_mode() -> None:
    parser = build_parser()
    rewind = parser.parse_args(
        ["replay", "rewind", "--stage", "projector", "--topic", "thumbnail.completed", "--to-time", "2026-11-28T10:00:00Z"]
    )
    assert (rewind.stage, rewind.topic, rewind.to_time) == ("projector", "thumbnail.completed", T0)
    task = str(uuid.uuid4())
    republish = parser.parse_args(["replay", "republish", "--topic", "thumbnail.fetched", "--task-id", task])
    assert republish.task_id == [task] and republish.since is None
    redrive = parser.parse_args(["replay", "redrive", "--reason", "TypeError", "--stage", "projector"])
    assert (redrive.reason, redrive.stage) == ("TypeError", "projector")


def test_republish_and_redrive_take_a_dry_run_and_a_limit() -> None:
    parser = build_parser()
    for mode in (["republish", "--topic", "thumbnail.requested"], ["redrive"]):
        plain = parser.parse_args(["replay", *mode])
        assert (plain.dry_run, plain.limit) == (False, None)  # without them: every selected record, sent
        chosen = parser.parse_args(["replay", *mode, "--dry-run", "--limit", "3"])
        assert (chosen.dry_run, chosen.limit) == (True, 3)
        for wrong in ("0", "-1", "x"):
            with pytest.raises(SystemExit):
                parser.parse_args(["replay", *mode, "--limit", wrong])


def test_a_dry_run_line_names_the_topic_task_key_and_size() -> None:
    task = str(uuid.uuid4())
    value = requested(task)
    assert described(Resend("p.thumbnail.requested", task.encode(), value, ())) == (
        f"would send to p.thumbnail.requested: task {task}, key {task}, {len(value)} bytes"
    )
    assert described(Resend("p.thumbnail.fetched", None, b"\xff", ())) == "would send to p.thumbnail.fetched: task -, key -, 1 bytes"


def test_cli_requires_exactly_one_rewind_target() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "rewind", "--stage", "fetcher", "--topic", "thumbnail.requested"])
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["replay", "rewind", "--stage", "fetcher", "--topic", "thumbnail.requested", "--to-earliest", "--to-latest"]
        )


def test_dead_letter_record_schema_example_parses() -> None:
    from services.common.events import schema_examples

    example = next(e for name, e in schema_examples() if name == "thumbnail.dlq.v1.json")
    letter = parse_dead_letter(record(json.dumps(example).encode()))
    assert letter is not None and letter.value == base64.b64decode(example["original_value_base64"])


def test_epoch_ms_is_exact_to_the_millisecond() -> None:
    assert epoch_ms(parse_time("2025-11-28T10:16:40.123Z")) == 1764325000123
    assert epoch_ms(parse_time("1970-01-01T00:00:00.0009Z")) == 0
