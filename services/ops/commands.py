"""`thumbs lag`: the argument parser, wiring the pure lag rows to the Kafka edge."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.common.settings import Settings
from services.replay.core import STAGE_TOPICS

from .lag import LagError, as_json, table

DESCRIPTION = """Consumer lag of the pipeline's stages: for each stage's consumer group (<prefix>thumbs-<stage>),
on every partition of the topics it reads, the committed offset, the log end (high watermark) and the lag
between them, and a total per group with its state and live members.

A partition the group never committed on (COMMITTED -) counts its lag from the earliest offset still
retained, as does one whose committed offset is older than that: the stages start there. Reads offsets
only; commits nothing."""


def register(commands: Any) -> None:
    """Adds `lag` to the `thumbs` sub-command parser."""
    lag = commands.add_parser("lag", help="consumer lag of the stages' groups per topic and partition",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    lag.add_argument("--stage", action="append", choices=list(STAGE_TOPICS),
                     help="only this stage's group (repeat for several; default: all three)")
    lag.add_argument("--json", action="store_true", help="a JSON document instead of the table")
    lag.set_defaults(handler=run_lag)


def run_lag(settings: Settings, args: argparse.Namespace) -> int:
    from .kafka import read_lag

    stages = [s for s in STAGE_TOPICS if not args.stage or s in args.stage]  # in pipeline order
    wanted = {settings.group(s): tuple(settings.topic(t) for t in STAGE_TOPICS[s]) for s in stages}
    try:
        groups = read_lag(settings, wanted)
    except LagError as exc:
        print(f"thumbs lag: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(as_json(groups), indent=2) if args.json else "\n".join(table(groups)))
    return 0
