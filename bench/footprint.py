"""What one task costs Kafka and Cassandra: bytes per topic and operations per table (for docs/capacity.md).

    .venv/bin/python bench/footprint.py [--tasks 200] [--kind fullhd]

Runs the whole pipeline on the local servers (an isolated environment) over distinct photo-like images,
waits until every task succeeded, then asks GET /thumbnail once per task, and reports:
- Kafka: the records of every pipeline topic (key + value + headers) per task; the bytes the brokers take in
  (times the replication factor on disk) and send to the consumer groups that read each topic.
- Cassandra: coordinator reads and writes per table of the environment's keyspace, per task and per GET
  (system_views.coordinator_{read,write}_latency: what the node itself counted).
Counts, not timings: they do not depend on how busy the machine is.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import KINDS
from bench.harness import server_settings, with_comment
from services.common.cassandra import connect, migrate
from services.common.model import PIPELINE_TOPICS
from services.common.settings import Settings
from services.common.topics import ensure_topics
from services.replay.core import STAGE_TOPICS
from tests.integration.stack import ImageServer, Stack, drop_environment, isolated_env, settings_of, topic_bytes, wait_for

OUT = Path(__file__).resolve().parent / "out"


def cassandra_counts(settings: Settings) -> Counter[tuple[str, str]]:
    """(table, read|write) -> requests the node coordinated for the environment's keyspace so far."""
    session = connect(settings)
    try:
        counts: Counter[tuple[str, str]] = Counter()
        for kind in ("read", "write"):
            rows = session.execute(f"SELECT table_name, count FROM system_views.coordinator_{kind}_latency "
                                   "WHERE keyspace_name = %s ALLOW FILTERING", (settings.keyspace,))
            for row in rows:
                counts[(row.table_name, kind)] += row.count
        return counts
    finally:
        session.cluster.shutdown()


def readers(topic: str) -> int:
    """Consumer groups that read `topic` (each reads every byte of it once)."""
    return sum(topic in topics for topics in STAGE_TOPICS.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kind", choices=sorted(KINDS), default="fullhd")
    args = parser.parse_args()
    n = args.tasks

    servers, origin = server_settings()
    env = isolated_env(servers.kafka_bootstrap, (servers.cassandra_hosts, servers.cassandra_port),
                       servers.state_dir / "footprint", TOPIC_PARTITIONS="6")
    settings = settings_of(env)
    ensure_topics(settings)
    migrate(settings)
    base = KINDS[args.kind](random.Random(f"footprint:{args.kind}"))
    images, stack = ImageServer(), Stack(env)
    urls = [images.add(f"/f/{n}.jpg", with_comment(base, f"footprint-{n}".encode())) for n in range(args.tasks)]
    stack.start()
    try:
        stack.wait_ready(120)
        before = cassandra_counts(settings)
        with httpx.Client(base_url=stack.api, timeout=30) as client:
            task_ids = [client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"] for url in urls]
            # Wait on the projector's counter, not on GETs: polling would add task-row reads of its own.
            # It has seen every task's requested, fetched and completed event once these are in.
            wait_for(lambda: stack.metric("projector", "thumbs_events_in_total") >= 3 * n, 600,
                     lambda: stack.log_tail("resizer"), interval=0.5)
            time.sleep(2.0)  # its last row writes land
            done = cassandra_counts(settings)
            statuses = Counter(client.get("/thumbnail", params={"task_id": t}).json()["status"] for t in task_ids)
            gets = cassandra_counts(settings)
        assert statuses == Counter({"SUCCESS": n}), statuses
        sizes = {topic: topic_bytes(settings, settings.topic(topic)) for topic in PIPELINE_TOPICS}
    finally:
        stack.stop()
        images.close()
        drop_environment(settings)

    per_task = {f"{t} {k}": (done[(t, k)] - before[(t, k)]) / n for t, k in sorted(done) if done[(t, k)] != before[(t, k)]}
    per_get = {f"{t} {k}": (gets[(t, k)] - done[(t, k)]) / n for t, k in sorted(gets) if gets[(t, k)] != done[(t, k)]}
    result = {
        "kind": args.kind, "tasks": n, "image_bytes": len(base), "servers": origin,
        "kafka_record_bytes_per_task": {t: b / n for t, b in sizes.items()},
        "kafka_readers": {t: readers(t) for t in sizes},
        "cassandra_ops_per_task": per_task,
        "cassandra_ops_per_get": per_get,
    }
    print(f"\nfootprint of one {args.kind} task ({len(base) / 1024:.0f} KiB source), {n} tasks:")
    print(f"  {'topic':<28}{'bytes/task':>12}{'read by':>9}{'egress/task':>13}")
    for topic, size in sizes.items():
        print(f"  {topic:<28}{size / n:>12.0f}{readers(topic):>9}{size / n * readers(topic):>13.0f}")
    total_in = sum(sizes.values()) / n
    total_out = sum(size * readers(t) for t, size in sizes.items()) / n
    print(f"  {'all topics':<28}{total_in:>12.0f}{'':>9}{total_out:>13.0f}")
    print("  Cassandra operations per task (API, fetcher, resizer, projector):")
    for key, value in per_task.items():
        print(f"    {key:<24}{value:6.2f}")
    print("  Cassandra operations per GET /thumbnail:")
    for key, value in per_get.items():
        print(f"    {key:<24}{value:6.2f}")
    OUT.mkdir(exist_ok=True)
    path = OUT / f"footprint-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
