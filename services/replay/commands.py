"""`thumbs replay`: the argument parser and the three modes, wiring the pure selection to the Kafka edge."""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from services.common.model import DLQ, PIPELINE_TOPICS, now_iso
from services.common.settings import Settings

from .core import (
    STAGE_TOPICS,
    ReplayError,
    Resend,
    RewindTarget,
    check_stage_topic,
    described,
    epoch_ms,
    parse_time,
    redrive_targets,
    replayed,
    select,
)
from .progress import Progress

if TYPE_CHECKING:  # the Kafka edge is imported when a mode runs, not when the parser is built
    from .kafka import BoundedRead

DESCRIPTION = """Reprocess records the pipeline has already seen. Every stage's effects are idempotent
(the same event twice gives one outcome and one stored thumbnail), so replays are safe to repeat.

  rewind     move a stage's consumer group back (or forward) on one topic; the stage must be stopped.
             Its next start re-reads from there. Use it to re-run a stage over everything since T.
  republish  copy a selection of one topic's records (by time range and/or task id) back onto that
             topic, with header thumbs-replay. Every stage reading the topic sees them again; the
             stages keep running. Use it to re-run a few tasks, or thumbnail.fetched after bumping
             THUMBS_RENDERER_VERSION (each image is re-rendered once).
  redrive    send dead-lettered records (thumbnail.dlq) back to the topic they came from, with header
             thumbs-redriven, once the cause of their rejection is fixed.

Times are ISO 8601 (2026-11-28T10:15:00Z); without a zone they mean UTC. Topic names are given
without THUMBS_TOPIC_PREFIX. Reads stop at the end the topic had when the command started.
republish and redrive take --dry-run (list what would be sent, send nothing) and --limit N."""


def register(commands: Any) -> None:
    """Adds `replay` with its three modes to the `thumbs` sub-command parser."""
    replay = commands.add_parser(
        "replay", help="rewind a stage, re-publish records, or redrive dead letters",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = replay.add_subparsers(dest="mode", required=True)
    topics = sorted({t for ts in STAGE_TOPICS.values() for t in ts})

    rewind = modes.add_parser("rewind", help="move a stopped stage's consumer-group offsets on one topic",
                              description="Commit new offsets for a stage's consumer group (thumbs-<stage>) "
                              "on one topic. Refused while any process of that stage is running.")
    rewind.add_argument("--stage", required=True, choices=sorted(STAGE_TOPICS))
    rewind.add_argument("--topic", required=True, choices=topics, help="topic name without the prefix")
    where = rewind.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-time", type=_time, metavar="ISO", help="first record at or after this time")
    where.add_argument("--to-offset", type=int, metavar="N", help="this offset on every partition (clamped to what Kafka holds)")
    where.add_argument("--to-earliest", action="store_true", help="the oldest record still retained")
    where.add_argument("--to-latest", action="store_true", help="the end: skip everything not yet read")
    rewind.add_argument("--dry-run", action="store_true", help="print the plan, commit nothing")
    rewind.set_defaults(handler=run_rewind)

    republish = modes.add_parser("republish", help="re-publish selected records of a topic onto it",
                                 description="Copy records of one topic back onto it (key, value and headers "
                                 "kept, header thumbs-replay added). Invalid events are never copied.")
    republish.add_argument("--topic", required=True, choices=sorted(set(PIPELINE_TOPICS) - {DLQ}),
                           help="topic name without the prefix")
    republish.add_argument("--since", type=_time, metavar="ISO", help="records written at or after this time")
    republish.add_argument("--until", type=_time, metavar="ISO", help="records written before this time")
    republish.add_argument("--task-id", nargs="+", default=[], metavar="ID", help="only these tasks' events")
    _add_sending_options(republish)
    republish.set_defaults(handler=run_republish)

    redrive = modes.add_parser("redrive", help="send dead-lettered records back to their source topics",
                               description="Send the original record of each selected dead letter back to its "
                               "source topic (header thumbs-redriven added). A record two stages dead-lettered "
                               "is sent once.")
    redrive.add_argument("--reason", metavar="TEXT", help="only dead letters whose reason contains this text (any case)")
    redrive.add_argument("--stage", choices=sorted(STAGE_TOPICS), help="only dead letters of this stage")
    redrive.add_argument("--since", type=_time, metavar="ISO", help="only records dead-lettered at or after this time")
    _add_sending_options(redrive)
    redrive.set_defaults(handler=run_redrive)


def _add_sending_options(mode: argparse.ArgumentParser) -> None:
    mode.add_argument("--dry-run", action="store_true", help="print each record that would be sent, send nothing")
    mode.add_argument("--limit", type=positive, metavar="N", help="send at most N records (the first N selected)")


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return number


def _time(text: str) -> Any:
    try:
        return parse_time(text)
    except ReplayError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


Handler = Callable[[Settings, argparse.Namespace], int]


def guarded(command: str) -> Callable[[Handler], Handler]:
    """Maps a ReplayError to `<command>: <message>` on stderr and exit status 1."""
    def decorate(run: Handler) -> Handler:
        def wrapper(settings: Settings, args: argparse.Namespace) -> int:
            try:
                return run(settings, args)
            except ReplayError as exc:
                print(f"{command}: {exc}", file=sys.stderr)
                return 1
        wrapper.__doc__ = run.__doc__
        return wrapper
    return decorate


_guarded = guarded("thumbs replay")


@_guarded
def run_rewind(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import commit_rewind, plan_rewind

    check_stage_topic(args.stage, args.topic)
    group, topic = settings.group(args.stage), settings.topic(args.topic)
    kind = "time" if args.to_time else "offset" if args.to_offset is not None else "earliest" if args.to_earliest else "latest"
    target = RewindTarget(kind, args.to_offset or 0, args.to_time)
    moves = plan_rewind(settings, group, topic, target)
    for move in moves:
        before = "none" if move.committed is None else str(move.committed)
        print(f"{group} {topic}[{move.partition}]: {before} -> {move.target}")
    if args.dry_run:
        print("dry run: nothing committed")
        return 0
    commit_rewind(settings, group, topic, moves)  # refuses while the stage has live members
    replays = sum(max(0, (m.committed or 0) - m.target) for m in moves)
    print(f"rewound {group} on {topic}: {len(moves)} partitions, {replays} records to read again at its next start")
    return 0


@_guarded
def run_republish(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import BoundedRead

    read = BoundedRead(settings, settings.topic(args.topic), epoch_ms(args.since) if args.since else None)
    progress = Progress("republish", read.total)
    at = now_iso()
    chosen = select(_counted(read, progress), args.since, args.until, args.task_id)
    _send(settings, read, (replayed(r, at) for r in chosen), progress, args)
    return _finish(progress, read.stalled, args.dry_run)


@_guarded
def run_redrive(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import BoundedRead

    read = BoundedRead(settings, settings.topic(DLQ), epoch_ms(args.since) if args.since else None)
    progress = Progress("redrive", read.total)
    ours = frozenset(settings.topic(t) for t in PIPELINE_TOPICS if t != DLQ)
    chosen = redrive_targets(
        _counted(read, progress), args.reason, stage=args.stage, since=args.since, allowed_topics=ours, at=now_iso()
    )
    _send(settings, read, chosen, progress, args)
    return _finish(progress, read.stalled, args.dry_run)


def _send(settings: Settings, read: BoundedRead, resends: Iterable[Resend], progress: Progress, args: argparse.Namespace) -> None:
    """Publishes (or, in a dry run, prints) the records, at most --limit of them; reading stops at the limit."""
    from .kafka import publish_all

    chosen = islice(resends, args.limit)
    try:
        if args.dry_run:
            for line in _dry_run(chosen, progress):
                print(line)
        else:
            asyncio.run(publish_all(settings, chosen, progress))
    finally:
        read.close()


def _dry_run(resends: Iterable[Resend], progress: Progress) -> Iterator[str]:
    for resend in resends:
        progress.selected += 1
        progress.tick()
        yield described(resend)


def _counted(records: Any, progress: Progress) -> Any:
    for record in records:
        progress.read += 1
        progress.tick()
        yield record


def _finish(progress: Progress, stalled: list[int], dry_run: bool = False) -> int:
    print(progress.summary())
    if dry_run:
        print("dry run: nothing published")
    if stalled:
        print(f"thumbs replay: stopped early, partitions {stalled} sent nothing for a while", file=sys.stderr)
        return 1
    return 0
