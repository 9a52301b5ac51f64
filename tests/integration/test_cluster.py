"""A replicated cluster under faults: 3 brokers, 3 Cassandra nodes, two instances of every stage.

Topics at replication factor 3 with min.insync.replicas=2, the keyspace at RF 3 and LOCAL_QUORUM. Mid-load,
the broker leading most thumbnail.fetched partitions is SIGKILLed, later a Cassandra node; both come back.
Every accepted task must end SUCCESS, each distinct image rendered once, no status ever moving backwards.
The cluster is started by the project's own `thumbs servers` code in a state dir of its own and stopped
after the module. `bench/chaos.py --cluster` runs the same faults under a longer load.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from services.common.kafka import client_config
from services.common.model import Completed
from services.common.settings import Settings
from thumbs_devtools.commands import environment
from thumbs_devtools.lifecycle import all_servers, ensure_running, start_servers, stop_servers
from thumbs_devtools.process import running_pid
from thumbs_devtools.server import Server
from thumbs_devtools.topology import choose

from .stack import ImageServer, Stack, completed_events, running_stack, wait_for
from .test_crash_recovery import with_comment
from .test_pipeline import photo

pytestmark = pytest.mark.integration

# Distinct images; every third one is also asked for under a second URL. THUMBS_CLUSTER_DISTINCT=450 is the
# documented full run (600 tasks); the default keeps CI short.
DISTINCT = int(os.environ.get("THUMBS_CLUSTER_DISTINCT", "120"))
TASKS = DISTINCT + DISTINCT // 3
RATE = 8.0  # tasks per second: the load lasts ~20 s, long enough for both faults to land inside it
STAGE_RANK = {"PENDING": 1, "FETCHED": 2, "SUCCESS": 3, "FAILURE": 3}
INSTANCES = ("api", "fetcher", "fetcher-2", "resizer", "resizer-2", "projector", "projector-2")


@dataclass(frozen=True)
class Cluster:
    nodes: dict[str, Server]  # kafka-1 ... cassandra-3
    clients: Settings  # what `thumbs servers env` prints for it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """3 brokers on 127.0.0.1:19092-19097 and a ring on 127.0.0.11-13, away from the default servers."""
    state = tmp_path_factory.mktemp("cluster")
    shared_cache = Settings().state_dir / "cache"
    shared_cache.mkdir(parents=True, exist_ok=True)
    (state / "cache").symlink_to(shared_cache)  # the jars the default servers resolved
    settings = Settings(kafka_bootstrap="127.0.0.1:19092", state_dir=state)
    topology = choose(settings, 3, 3)
    nodes = {server.name: server for server in all_servers(settings, topology)}
    strangers = [server.address() for server in nodes.values() if server.answers()]
    assert not strangers, f"servers of another run still answer at {strangers}: the faults need nodes of our own"
    try:
        ensure_running(settings, print, topology)
        yield Cluster(nodes, Settings.from_env(environment(settings, topology)))
    finally:
        stop_servers(all_servers(settings, topology), print, grace=20)


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clients = cluster.clients
    hosts = (clients.cassandra_hosts, clients.cassandra_port)
    extra = {"TOPIC_REPLICATION_FACTOR": "3", "TOPIC_MIN_INSYNC_REPLICAS": "2", "CASSANDRA_LOCAL_DC": "dc1",
             "CASSANDRA_REPLICATION": clients.cassandra_replication}
    with running_stack(clients.kafka_bootstrap, hosts, tmp_path_factory.mktemp("stack"), names=INSTANCES,
                       static_members=True, **extra) as stack:
        yield stack


@dataclass
class Load:
    """Submits tasks at a steady rate and follows each until it is terminal, recording what the API said."""

    stack: Stack
    urls: list[str]
    accepted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    finished_at: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, dict[str, object]] = field(default_factory=dict)
    submitted: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # the test ended early: let go at once

    def run(self, timeout: float = 300) -> threading.Thread:
        """Submits in one thread and follows in another; the returned thread ends when all are terminal."""
        threading.Thread(target=self.submit, daemon=True).start()
        follower = threading.Thread(target=self.follow, args=(time.monotonic() + timeout,), daemon=True)
        follower.start()
        return follower

    def submit(self) -> None:
        started = time.monotonic()
        try:
            self._submit(started)
        finally:
            self.submitted.set()

    def _submit(self, started: float) -> None:
        with httpx.Client(base_url=self.stack.api, timeout=30) as client:
            for index, url in enumerate(self.urls):
                time.sleep(max(0.0, started + index / RATE - time.monotonic()))
                if self.stop.is_set():
                    return
                response = client.post("/thumbnail", json={"source_image_url": url})
                if response.status_code == 202:
                    self.accepted.append(response.json()["task_id"])
                elif response.status_code == 503 and "retry-after" in response.headers:
                    self.refused[503] += 1
                else:
                    self.server_errors.append(f"POST {response.status_code}: {response.text[:200]}")

    def follow(self, deadline: float) -> None:
        rank: dict[str, int] = {}
        with httpx.Client(base_url=self.stack.api, timeout=30) as client:
            while time.monotonic() < deadline and not self.stop.is_set():
                open_tasks = [t for t in list(self.accepted) if t not in self.finished_at]
                if self.submitted.is_set() and not open_tasks:
                    return
                for task_id in open_tasks:
                    response = client.get("/thumbnail", params={"task_id": task_id})
                    if response.status_code >= 500:
                        self.server_errors.append(f"GET {response.status_code}: {response.text[:200]}")
                        continue
                    body = response.json()
                    now = STAGE_RANK[body["status"] if body["status"] != "PENDING" else body["stage"]]
                    if now < rank.get(task_id, 0):
                        self.regressions.append(f"{task_id}: {rank[task_id]} -> {body}")
                    rank[task_id] = max(now, rank.get(task_id, 0))
                    if body["status"] in ("SUCCESS", "FAILURE"):
                        self.finished_at[task_id] = time.monotonic()
                        self.statuses[task_id] = body
                time.sleep(0.2)

    def resumed_after(self, moment: float) -> float:
        """Seconds from `moment` to the first task seen finishing after it."""
        later = [t for t in self.finished_at.values() if t > moment]
        return min(later) - moment if later else float("inf")


def fetched_leader(settings: Settings) -> int:
    """The broker id leading the most partitions of thumbnail.fetched."""
    admin = AdminClient(client_config(settings))
    topic = admin.list_topics(settings.topic("thumbnail.fetched"), timeout=10).topics[settings.topic("thumbnail.fetched")]
    assert {len(p.replicas) for p in topic.partitions.values()} == {3}, "thumbnail.fetched is not replicated 3 times"
    return Counter(p.leader for p in topic.partitions.values()).most_common(1)[0][0]


def restart_later(server: Server, seconds: float) -> Future[list[str]]:
    """Starts `server` again after `seconds`, in the background; the future holds its start failures."""
    def restart() -> list[str]:
        time.sleep(seconds)
        return start_servers([server], print)

    return ThreadPoolExecutor(1).submit(restart)


def crash(server: Server) -> None:
    pid = running_pid(server.layout.pid_file, server.main_class)
    assert pid is not None, f"{server.name} is not running"
    os.kill(pid, signal.SIGKILL)


def test_broker_and_node_killed_mid_load_lose_nothing(cluster: Cluster, stack: Stack) -> None:
    servers = cluster.nodes
    images = ImageServer()
    base = photo(320, 240, seed=40)
    urls = [images.add(f"/c/{n}.jpg", with_comment(base, f"cluster-{n}")) for n in range(DISTINCT)]
    urls += [images.add(f"/again/{n}.jpg", with_comment(base, f"cluster-{n}")) for n in range(0, DISTINCT, 3)]
    load = Load(stack, urls)
    try:
        follower = load.run()
        # Both faults land while tasks are still arriving: a restarted broker takes 5-20 s here to answer
        # again, so each node is brought back in the background.
        time.sleep(4)
        broker = servers[f"kafka-{fetched_leader(stack.settings)}"]
        broker_killed = time.monotonic()
        crash(broker)
        broker_back = restart_later(broker, 3)
        time.sleep(7)
        node = servers["cassandra-3"]
        node_killed = time.monotonic()
        crash(node)
        node_back = restart_later(node, 3)
        for back in (broker_back, node_back):
            assert back.result(timeout=240) == [], back.result()
        follower.join(timeout=320)
    finally:
        load.stop.set()
        images.close()

    print(f"cluster: {len(load.accepted)} accepted, {load.refused[503]} refused with 503; completions resumed "
          f"{load.resumed_after(broker_killed):.1f} s after the {broker.name} kill and "
          f"{load.resumed_after(node_killed):.1f} s after the {node.name} kill")
    assert not load.server_errors, load.server_errors[:5]
    assert not load.regressions, load.regressions[:5]
    assert len(load.accepted) >= TASKS * 0.9, f"only {len(load.accepted)} of {TASKS} accepted"
    statuses = Counter(load.statuses.get(t, {}).get("status", "NOT FINISHED") for t in load.accepted)
    assert statuses == Counter({"SUCCESS": len(load.accepted)}), statuses

    renders = Counter(e.payload.source_sha256 for e in completed_events(stack.settings)
                      if isinstance(e.payload, Completed) and not e.payload.deduplicated)
    # A POST answered 503 while the broker was away may still have reached Kafka (its acknowledgement was
    # lost): such a task runs although the client was told to retry, so renders may cover more than the
    # accepted tasks' images; each image, accepted or not, is rendered once.
    distinct = {load.statuses[t]["source_sha256"] for t in load.accepted}
    assert distinct <= set(renders) and max(renders.values()) == 1, renders.most_common(3)
    assert sum(stack.metric(name, "thumbs_resizes_total") for name in ("resizer", "resizer-2")) == len(renders)
    # both instances of every stage took part
    for name in INSTANCES[1:]:
        assert stack.metric(name, "thumbs_events_in_total") > 0, f"{name} handled nothing"


def test_rolling_restart_of_every_stage_instance_under_load(stack: Stack) -> None:
    """SIGTERM each instance in turn, each back before the next: nothing lost, nothing rendered twice, and
    with static membership no other member's partitions move (no rebalance storm)."""
    images = ImageServer()
    stages = INSTANCES[1:]
    logs = {name: stack.settings.state_dir / f"{name}.log" for name in stages}
    before = {name: path.read_text(errors="replace").count(": revoked ") for name, path in logs.items()}
    base = photo(320, 240, seed=41)
    load = Load(stack, [images.add(f"/roll/{n}.jpg", with_comment(base, f"rolling-{n}")) for n in range(DISTINCT)])
    try:
        follower = load.run()
        for name in stages:
            stack.stop(name)  # SIGTERM: drain in-flight records, commit, close
            stack.start(name)
            wait_for(lambda n=name: _serves_metrics(stack, n), 30, lambda n=name: stack.log_tail(n))
        follower.join(timeout=320)
    finally:
        load.stop.set()
        images.close()
    assert not load.server_errors, load.server_errors[:5]
    assert not load.regressions, load.regressions[:5]
    statuses = Counter(load.statuses.get(t, {}).get("status", "NOT FINISHED") for t in load.accepted)
    assert statuses == Counter({"SUCCESS": len(load.accepted)}), statuses
    mine = {load.statuses[t]["source_sha256"] for t in load.accepted}
    renders = Counter(e.payload.source_sha256 for e in completed_events(stack.settings)
                      if isinstance(e.payload, Completed) and not e.payload.deduplicated
                      and e.payload.source_sha256 in mine)
    assert renders == Counter({sha: 1 for sha in mine}), renders.most_common(3)
    # No rebalance storm: an instance lets its partitions go when it is itself stopped (a revoke per
    # subscription), and at most once more when a restarted member was the group's leader, whose rejoin
    # makes the coordinator rebalance (with dynamic membership, every stop and every start rebalances the group).
    own = {name: {"fetcher": 2}.get(name.split("-")[0], 1) for name in stages}
    revokes = {name: path.read_text(errors="replace").count(": revoked ") - before[name] for name, path in logs.items()}
    assert all(revokes[name] <= own[name] + 1 for name in stages), revokes
    assert sum(revokes.values()) <= sum(own.values()) + 2, revokes


def _serves_metrics(stack: Stack, name: str) -> bool:
    try:
        return stack.metric(name, "thumbs_events_in_total") >= 0
    except httpx.HTTPError:
        return False
