"""`thumbs lag`'s rows, totals and output, from plain offsets: no Kafka."""
from __future__ import annotations

import json

import pytest

from services.cli import build_parser
from services.ops.lag import GroupLag, PartitionLag, as_json, group_lag, table

REQUESTED, RETRY = "p.thumbnail.requested", "p.thumbnail.requested.retry"
WATERMARKS = {(REQUESTED, 0): (0, 10), (REQUESTED, 1): (4, 9), (RETRY, 0): (0, 0), ("p.thumbnail.fetched", 0): (0, 7)}


@pytest.mark.parametrize(
    ("committed", "earliest", "log_end", "lag"),
    [
        (6, 0, 10, 4),
        (10, 0, 10, 0),
        (None, 0, 10, 10),  # never committed: everything retained is still to read
        (None, 4, 9, 5),  # ... counted from the earliest retained offset, not from 0
        (2, 4, 9, 5),  # committed before what retention kept: the stage restarts at the earliest
        (12, 0, 10, 0),  # ahead of the log end (a recreated topic): nothing to read, never negative
    ],
)
def test_partition_lag(committed: int | None, earliest: int, log_end: int, lag: int) -> None:
    assert PartitionLag("t", 0, committed, earliest, log_end).lag == lag


def test_group_lag_takes_the_groups_topics_only_and_totals_them() -> None:
    group = group_lag("p.thumbs-fetcher", (REQUESTED, RETRY), WATERMARKS, {(REQUESTED, 0): 7, (RETRY, 0): -1001},
                      state="STABLE", members=2)
    assert [(p.topic, p.partition, p.committed, p.lag) for p in group.partitions] == [
        (REQUESTED, 0, 7, 3), (REQUESTED, 1, None, 5), (RETRY, 0, None, 0),  # -1001 is Kafka's "no offset"
    ]
    assert group.total == 8 and (group.state, group.members) == ("STABLE", 2)


def test_a_group_that_never_formed_lags_by_everything_retained() -> None:
    assert group_lag("p.thumbs-resizer", ("p.thumbnail.fetched",), WATERMARKS, {}).total == 7


def test_table_aligns_columns_with_a_total_row_per_group() -> None:
    groups = [
        group_lag("p.thumbs-fetcher", (REQUESTED,), WATERMARKS, {(REQUESTED, 0): 7}, state="STABLE", members=1),
        GroupLag("p.thumbs-resizer", "DEAD", 0, ()),
    ]
    assert table(groups) == [
        "GROUP             TOPIC                     PARTITION  COMMITTED  LOG-END  LAG",
        "p.thumbs-fetcher  p.thumbnail.requested             0          7       10    3",
        "p.thumbs-fetcher  p.thumbnail.requested             1          -        9    5",
        "p.thumbs-fetcher  total (stable, 1 member)                                   8",
        "p.thumbs-resizer  total (dead, 0 members)                                    0",
    ]


def test_json_carries_every_number_and_null_for_no_commit() -> None:
    group = group_lag("p.thumbs-fetcher", (REQUESTED,), WATERMARKS, {(REQUESTED, 1): 5})
    document = json.loads(json.dumps(as_json([group])))
    assert document == {"groups": [{
        "group": "p.thumbs-fetcher", "state": "UNKNOWN", "members": 0, "total_lag": 14, "partitions": [
            {"topic": REQUESTED, "partition": 0, "committed": None, "earliest": 0, "log_end": 10, "lag": 10},
            {"topic": REQUESTED, "partition": 1, "committed": 5, "earliest": 4, "log_end": 9, "lag": 4},
        ],
    }]}


def test_cli_parses_lag_with_repeated_stages() -> None:
    args = build_parser().parse_args(["lag", "--stage", "fetcher", "--stage", "projector", "--json"])
    assert (args.stage, args.json, args.handler.__module__) == (["fetcher", "projector"], True, "services.ops.commands")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lag", "--stage", "api"])
