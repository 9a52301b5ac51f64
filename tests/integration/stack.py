"""Helpers for integration tests: isolated settings, a loopback image server, and the real processes."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from services.common.cassandra import connect, migrate
from services.common.events import decode
from services.common.kafka import client_config
from services.common.model import COMPLETED, Event
from services.common.settings import PREFIX, Settings
from services.common.topics import ensure_topics
from thumbs_devtools.supervisor import Instance

REPO = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def isolated_env(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp: Path, **extra: str) -> dict[str, str]:
    """THUMBS_* variables for one isolated environment: its own topics, groups, keyspace and ports."""
    name = "t" + uuid.uuid4().hex[:10]
    hosts, port = cassandra_contact
    stats_port = free_port()
    env = {
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TOPIC_PREFIX": f"{name}.",
        "TOPIC_PARTITIONS": "3",
        "CASSANDRA_HOSTS": ",".join(hosts),
        "CASSANDRA_PORT": str(port),
        "KEYSPACE": name,
        "API_PORT": str(free_port()),
        "FETCHER_METRICS_PORT": str(free_port()),
        "RESIZER_METRICS_PORT": str(free_port()),
        "PROJECTOR_METRICS_PORT": str(free_port()),
        "NOTIFIER_METRICS_PORT": str(free_port()),  # only modules that name "notifier" start one
        "STATS_METRICS_PORT": str(free_port()),  # and "stats"
        "STATS_PORT": str(stats_port),
        "STATS_URL": f"http://127.0.0.1:{stats_port}",
        "FETCH_ALLOW_NETWORKS": "127.0.0.2/32",  # images are served on 127.0.0.2 only
        "STATE_DIR": str(tmp),
        **extra,
    }
    return {PREFIX + key: value for key, value in env.items()}


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def drop_environment(settings: Settings) -> None:
    """Deletes an environment's topics, consumer groups and keyspace, best effort.

    Left behind, every run's topics stay on a developer's long-lived local broker, and a broker restart
    then spends tens of seconds recovering their partitions.
    """
    prefix = settings.topic_prefix
    try:
        admin = AdminClient(client_config(settings))
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in (admin.delete_topics(topics, operation_timeout=30).values() if topics else []):
            future.result(30)
        groups = [settings.group(s) for s in ("fetcher", "resizer", "projector", "notifier", "stats")]
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            try:
                future.result(15)
            except Exception:  # noqa: BLE001 - a group that never formed is fine
                pass
        session = connect(settings)
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.keyspace}", timeout=60)
        session.cluster.shutdown()
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort; say what is left
        print(f"cleanup: could not drop topics/keyspace {prefix}*: {exc}")


class _OriginHTTPServer(http.server.ThreadingHTTPServer):
    # A real origin's listen backlog. socketserver's default of 5 drops SYNs when the fetcher opens its
    # 64 connections at once, and a connect delayed by SYN retransmits ends as SOURCE_TIMEOUT.
    request_queue_size = 128
    daemon_threads = True


class ImageServer:
    """Serves in-memory bodies on a loopback address; `routes[path] = (status, headers, body)`."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.behaviours: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                if path in server.behaviours:
                    server.behaviours[path](self)
                    return
                status, headers, body = server.routes.get(path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._httpd = _OriginHTTPServer((host, 0), Handler)
        self.base = f"http://{host}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg", status: int = 200) -> str:
        self.routes[path] = (status, {"Content-Type": content_type}, body)
        return self.base + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = (status, {"Location": location}, b"")
        return self.base + path

    def behave(self, path: str, behaviour: Callable[[http.server.BaseHTTPRequestHandler], None]) -> str:
        """Serves `path` with a hand-written response (slow, lying or endless origins)."""
        self.behaviours[path] = behaviour
        return self.base + path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class Stack:
    """The API and the stages as real processes, the way `thumbs run` starts them."""

    env: dict[str, str]
    names: tuple[str, ...] = ("api", "fetcher", "resizer", "projector")
    static_members: bool = False  # as `thumbs run` starts them; off where a test needs a group to empty at once
    process_env: dict[str, str] = field(default_factory=dict)  # variables without the THUMBS_ prefix (OTEL_*)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return settings_of(self.env)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def start(self, *names: str) -> None:
        """Starts processes by instance name: `resizer` or `resizer-2` (another member of its stage's group)."""
        log_dir = self.settings.state_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        for name in names or self.names:
            instance = _instance(name)
            with open(log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "services.cli", instance.stage],
                    env={**os.environ, **self.process_env, **self.env,
                         **instance.environment(self.settings, member_id=name if self.static_members else "")},
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                )

    def stop(self, *names: str, kill: bool = False) -> None:
        for name in names or tuple(self.processes):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            process.kill() if kill else process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.settings.state_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(lambda: _answers(self.api + "/ready"), timeout, lambda: "API not ready:\n" + self.log_tail("api"))

    def metrics_text(self, name_or_stage: str) -> str:
        """One process's /metrics (`resizer`, `resizer-2`, `api`)."""
        instance = _instance(name_or_stage)
        port = self.settings.api_port if instance.stage == "api" else int(
            instance.environment(self.settings)[f"{PREFIX}{instance.stage.upper()}_METRICS_PORT"])
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def metric(self, name_or_stage: str, name: str) -> float:
        """A counter summed over its labels, read from one process (`resizer`, `resizer-2`, `api`)."""
        text = self.metrics_text(name_or_stage)
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                label_part = line[len(name):]
                if label_part.startswith(("{", " ")):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def _instance(name: str) -> Instance:
    stage, _, number = name.partition("-")
    return Instance(stage, int(number or 1))


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every record of a topic, from its start to the end it had when the read began."""
    consumer = Consumer({**client_config(settings), "group.id": f"check-{uuid.uuid4()}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        positions = {p: 0 for p in partitions}
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    records.append(message)
                    positions[message.partition()] = message.offset() + 1
        assert all(positions[p] >= ends[p] for p in partitions), f"could not read {topic} to its end"
        return records
    finally:
        consumer.close()


def completed_events(settings: Settings) -> list[Event]:
    """Every thumbnail.completed event of an environment."""
    return [decode(m.value(), [(k, v or b"") for k, v in m.headers() or ()])
            for m in read_topic(settings, settings.topic(COMPLETED))]


def topic_bytes(settings: Settings, topic: str) -> int:
    """Bytes of a topic's records as produced: keys, values and headers."""
    return sum(len(m.key() or b"") + len(m.value() or b"") + sum(len(k) + len(v or b"") for k, v in m.headers() or ())
               for m in read_topic(settings, topic))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, describe: Callable[[], str], interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s: {describe()}")


def poll_terminal(client: httpx.Client, task_id: str, timeout: float = 60.0, *, produced_to_kafka: bool = False) -> dict:
    """Polls GET /thumbnail until the task is SUCCESS or FAILURE; fails the test on timeout.

    A task produced straight to Kafka has no row until the projector has read its request: `produced_to_kafka`
    lets 404 mean "not yet" (through the API, the row exists before the 202).
    """
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        response = client.get("/thumbnail", params={"task_id": task_id})
        if produced_to_kafka and response.status_code == 404:
            time.sleep(0.1)
            continue
        assert response.status_code in (200, 202), response.text
        last = response.json()
        if last["status"] in ("SUCCESS", "FAILURE"):
            return last
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal after {timeout}s: {last}")


@contextmanager
def running_stack(
    kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp: Path,
    names: tuple[str, ...] = Stack.names, static_members: bool = False, process_env: dict[str, str] | None = None,
    **extra: str,
) -> Iterator[Stack]:
    """An isolated environment (topics and tables created) with `names` running until exit; dropped after."""
    env = isolated_env(kafka_bootstrap, cassandra_contact, tmp, **extra)
    ensure_topics(settings_of(env))
    migrate(settings_of(env))
    stack = Stack(env, names, static_members, dict(process_env or {}))
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        drop_environment(settings_of(env))
