"""`thumbs dlq`: list and show dead letters, wiring the pure views of dlq.py to the Kafka edge."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.common.model import DLQ
from services.common.settings import Settings

from .commands import guarded, positive
from .core import STAGE_TOPICS, ReplayError, epoch_ms, parse_time
from .dlq import details, entry_of, latest, line, matching, parse_position, rendered, summary

DESCRIPTION = """Read the dead-letter topic (thumbnail.dlq): records a stage could not process, each with the
reason, the stage, and the original record in full. Reading changes nothing: no offset is committed.
`thumbs replay redrive` sends dead letters back once their cause is fixed."""


def register(commands: Any) -> None:
    """Adds `dlq` with `list` and `show` to the `thumbs` sub-command parser."""
    dlq = commands.add_parser("dlq", help="list and show dead letters (thumbnail.dlq)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = dlq.add_subparsers(dest="action", required=True)

    listing = actions.add_parser(
        "list", help="one line per dead letter, most recent last",
        description="One line per dead letter: PARTITION:OFFSET on thumbnail.dlq, time written, stage, origin "
        "topic[partition]@offset, task id (when the original is a valid event) and reason. Shows the --limit most "
        "recent that match, oldest first; reads up to the end the topic had when the command started.",
    )
    listing.add_argument("--limit", type=positive, default=50, metavar="N", help="the N most recent (default 50)")
    listing.add_argument("--stage", choices=sorted(STAGE_TOPICS), help="only dead letters of this stage")
    listing.add_argument("--reason", metavar="TEXT", help="only dead letters whose reason contains this text (any case)")
    listing.add_argument("--since", type=_time_ms, metavar="ISO", help="only dead letters written at or after this time")
    listing.add_argument("--json", action="store_true", help="a JSON array of objects instead of lines")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser(
        "show", help="one dead letter in full",
        description="One dead letter in full: reason, stage, origin, key and headers, and the original value: the "
        "event it holds, or (not an event) its size, sha256 and a printable preview.",
    )
    show.add_argument("position", metavar="PARTITION:OFFSET",
                      help="where the dead letter is on thumbnail.dlq, as `thumbs dlq list` prints it "
                      "(a bare OFFSET when the topic has one partition)")
    show.add_argument("--json", action="store_true", help="a JSON object (key and headers in base64, as in the record)")
    show.set_defaults(handler=run_show)


def _time_ms(text: str) -> int:
    try:
        return epoch_ms(parse_time(text))
    except ReplayError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@guarded("thumbs dlq")
def run_list(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import BoundedRead

    read = BoundedRead(settings, settings.topic(DLQ), args.since)
    try:
        chosen = matching((entry_of(r) for r in read), stage=args.stage, reason=args.reason, since_ms=args.since)
        shown, count = latest(chosen, args.limit)
    finally:
        read.close()
    if args.json:
        print(json.dumps([summary(e) for e in shown], indent=2, ensure_ascii=False))
    else:
        for entry in shown:
            print(line(entry))
    print(f"thumbs dlq: {len(shown)} of {count} matching dead letters shown", file=sys.stderr)
    if read.stalled:
        print(f"thumbs dlq: stopped early, partitions {read.stalled} sent nothing for a while", file=sys.stderr)
        return 1
    return 0


@guarded("thumbs dlq")
def run_show(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import read_one

    partition, offset = parse_position(args.position)
    doc = details(entry_of(read_one(settings, settings.topic(DLQ), partition, offset)))
    print(json.dumps(doc, indent=2, ensure_ascii=False) if args.json else "\n".join(rendered(doc)))
    return 0
