"""The pipeline under benchmark: servers, an image origin on 127.0.0.2, and the four stages as real processes.

The only module of the benchmark that uses the integration-test helpers (tests/integration/stack.py).
"""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import Completions
from bench.procstat import Sampler, descendants, listening_pid
from services.common.cassandra import migrate
from services.common.model import COMPLETED, FAILED
from services.common.settings import Settings
from services.common.topics import ensure_topics
from services.replay.core import STAGE_TOPICS
from tests.integration.stack import ImageServer, Stack, drop_environment, isolated_env, settings_of
from thumbs_devtools.lifecycle import ensure_running

IMAGE_HOST = "127.0.0.2"
LATENCY = re.compile(r'^thumbs_(?:stage|cassandra_request)_seconds_(?P<kind>sum|count)\{(?:[^}]*operation="(?P<operation>[^"]+)")?'
                     r'[^}]*\} (?P<value>\S+)$')
CASSANDRA_COUNT = re.compile(r'^thumbs_cassandra_request_seconds_count\{(?=[^}]*operation="(?P<operation>[^"]+)")[^}]*\} (?P<value>\S+)$')
SERVER_VARIABLES = ("THUMBS_KAFKA_BOOTSTRAP", "THUMBS_CASSANDRA_HOSTS", "THUMBS_CASSANDRA_PORT")
Bases = dict[str, list[bytes]]
STAGES = ("fetcher", "resizer", "projector", "stats")  # what `paused()` stops: never the API, Kafka or Cassandra


def server_settings() -> tuple[Settings, str]:
    """The Kafka and Cassandra to use: the environment's if it names them, else the local ones, started if needed."""
    if any(name in os.environ for name in SERVER_VARIABLES):
        return Settings.from_env(), "from THUMBS_* environment"
    settings = Settings()
    ensure_running(settings, say=lambda line: print(f"  servers: {line}"))
    return settings, "local servers (thumbs_devtools)"


def with_comment(jpeg: bytes, tag: bytes) -> bytes:
    """The same JPEG with a COM segment right after SOI: new bytes and sha256, identical pixels and decode cost."""
    if jpeg[:2] != b"\xff\xd8" or len(tag) > 65533:
        raise ValueError("not a JPEG, or the comment is too long")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + jpeg[2:]


class _Routes(dict):  # type: ignore[type-arg]
    """ImageServer routes computed from the path, so any number of URLs costs no memory.

    /v/<kind>/<index>/<tag>.jpg    base image with the comment <tag>: one distinct image per tag
    /same/<kind>/<index>/<n>.jpg   the base image's own bytes under any number of URLs (dedupe)
    """

    def __init__(self, bases: Bases) -> None:
        super().__init__()
        self._bases = bases

    def get(self, path: str, default: Any = None) -> Any:
        parts = path.strip("/").split("/")
        try:
            mode, kind, index, name = parts
            data = self._bases[kind][int(index)]
        except (ValueError, KeyError, IndexError):
            return default
        if mode == "v":
            data = with_comment(data, name.removesuffix(".jpg").encode())
        elif mode != "same":
            return default
        return 200, {"Content-Type": "image/jpeg"}, data


def _serve(bases: Bases, reply: Any, parent: int, lifetime: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the benchmark, which stops this process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the benchmark's handler, inherited through fork
    server = ImageServer(IMAGE_HOST)
    server.routes = _Routes(bases)
    reply.send(server.base)
    deadline = time.monotonic() + lifetime
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)


class ImageOrigin:
    """The image server in a process of its own, so serving images takes no time from the load generator."""

    def __init__(self, bases: Bases, lifetime: float) -> None:
        context = multiprocessing.get_context("fork")  # before any thread or client exists in this process
        receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(bases, send, os.getpid(), lifetime), daemon=True)
        self.process.start()
        if not receive.poll(30):
            self.close()
            raise RuntimeError("the image server did not start within 30 s")
        self.base: str = receive.recv()

    def distinct(self, kind: str, index: int, tag: str) -> str:
        return f"{self.base}/v/{kind}/{index}/{tag}.jpg"

    def same(self, kind: str, index: int, n: int) -> str:
        return f"{self.base}/same/{kind}/{index}/{n}.jpg"

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


class Pipeline:
    """Own topics, keyspace and ports; the five processes; CPU/RSS sampling; a watcher of terminal events."""

    def __init__(self, servers: Settings, workers: int, state_dir: Path, keep: bool = False, api_workers: int = 1,
                 api_cache_bytes: int | None = None, resizers: int = 1) -> None:
        contact = (servers.cassandra_hosts, servers.cassandra_port)
        # `workers` render processes in all, shared by `resizers` resizer processes (one consumer group).
        self.env = isolated_env(servers.kafka_bootstrap, contact, state_dir,
                                RESIZER_WORKERS=str(max(1, workers // resizers)), TOPIC_PARTITIONS="6",
                                API_WORKERS=str(api_workers),
                                **({} if api_cache_bytes is None else {"API_CACHE_BYTES": str(api_cache_bytes)}))
        self.settings = settings_of(self.env)
        self.resizers = ("resizer", *(f"resizer-{n}" for n in range(2, resizers + 1)))
        # statistics on, as deployed: their cost counts
        self.stack = Stack(self.env, names=(*Stack.names, *self.resizers[1:], "stats"))
        self.keep = keep
        self.pool_pids: set[int] = set()
        self.stopped_pids: set[int] = set()
        self.jvms = {"kafka": listening_pid(_port(servers.kafka_bootstrap), "kafka.Kafka"),
                     "cassandra": listening_pid(servers.cassandra_port, "CassandraDaemon")}
        self.sampler: Sampler | None = None
        self.completions: Completions | None = None

    @property
    def api(self) -> str:
        return self.stack.api

    def start(self, timeout: float = 90.0) -> None:
        ensure_topics(self.settings)
        migrate(self.settings)
        self.stack.start()
        self.stack.wait_ready(timeout)

    def watch(self, extra: dict[str, list[int]]) -> None:
        """Starts sampling processes and recording terminal events (from Kafka's end offsets as of now)."""
        groups = {"fetcher": self._pid_of("fetcher"), "resizer": lambda: [p for r in self.resizers for p in self._pid_of(r)()]}
        groups["api"] = self._api_processes
        groups["resizer-pool"] = self._pool
        groups["projector"] = self._pid_of("projector")
        groups["stats"] = self._pid_of("stats")
        groups.update({name: (lambda pid=pid: [pid] if pid else []) for name, pid in self.jvms.items()})
        groups.update({name: (lambda pids=pids: pids) for name, pids in extra.items()})
        self.sampler = Sampler(groups)
        self.sampler.start()
        self.completions = Completions(self.settings.kafka_bootstrap, self.settings.topic(COMPLETED),
                                       self.settings.topic(FAILED))
        self.completions.start()

    def cassandra_requests(self) -> dict[str, float]:
        """Cassandra statements run so far by every process, per operation (the processes' own counts)."""
        counts: dict[str, float] = {}
        for name in self.stack.names:
            for line in self.stack.metrics_text(name).splitlines():
                found = CASSANDRA_COUNT.match(line)
                if found:
                    counts[found["operation"]] = counts.get(found["operation"], 0.0) + float(found["value"])
        return counts

    def latencies(self, stage: str) -> dict[str, tuple[float, float]]:
        """(seconds, count) so far of one stage's record handling ("record") and of its Cassandra statements per
        operation, summed over its instances: where a record's time goes, read as differences."""
        totals: dict[str, list[float]] = {}
        for instance in self.instances(stage):
            for line in self.stack.metrics_text(instance).splitlines():
                found = LATENCY.match(line)
                if found:
                    name = found["operation"] or "record"
                    entry = totals.setdefault(name, [0.0, 0.0])
                    entry[0 if found["kind"] == "sum" else 1] += float(found["value"])
        return {name: (seconds, count) for name, (seconds, count) in totals.items()}

    def kafka_log_bytes(self) -> dict[str, int]:
        """Bytes in the local brokers' log segments per topic of this run (broker-side bytes in); {} when the
        brokers are not this machine's `thumbs servers`."""
        sizes: dict[str, int] = {}
        for segment in Settings().state_dir.glob(f"servers/kafka-*/data/{self.settings.topic_prefix}*/*.log"):
            topic = segment.parent.name.rsplit("-", 1)[0]
            sizes[topic] = sizes.get(topic, 0) + segment.stat().st_size
        return sizes

    def readers(self, topic: str) -> int:
        """Consumer groups of the running stages that read `topic` (each reads every byte of it once)."""
        prefix = self.settings.topic_prefix
        stages = sum(1 for stage in self.stack.names if any(prefix + name == topic for name in STAGE_TOPICS.get(stage, ())))
        return stages + (topic == f"{self.settings.group('stats')}-observations")  # the stats stage's own hop

    def instances(self, stage: str) -> list[str]:
        return [name for name in self.stack.names if name == stage or name.startswith(f"{stage}-")]

    def counter(self, stage: str, name: str) -> float:
        """A counter summed over a stage's instances."""
        return sum(self.stack.metric(instance, name) for instance in self.instances(stage))

    def poll_success(self, task_ids: list[str], timeout: float) -> None:
        """Waits through the API (used only outside measurements) until every task is SUCCESS."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.api, timeout=10) as client:
            for task_id in task_ids:
                while True:
                    body = client.get("/thumbnail", params={"task_id": task_id}).json()
                    if body["status"] == "SUCCESS":
                        break
                    if body["status"] == "FAILURE" or time.monotonic() > deadline:
                        raise RuntimeError(f"warm-up task {task_id} did not succeed: {body}\n"
                                           + self.stack.log_tail("resizer"))
                    time.sleep(0.1)

    @contextmanager
    def paused(self) -> Iterator[list[int]]:
        """SIGSTOPs the stages and the resizer's pool workers, SIGCONTs them on the way out whatever happens.

        The API alone then runs on these cores, as it would with the workers on other machines. A pause
        longer than the consumers' session timeout makes them rejoin their groups on resume.
        """
        try:
            for name in (*STAGES, *self.resizers[1:]):
                for pid in self._pid_of(name)():
                    self._stop(pid)
            for pid in self._pool():  # after the resizer is stopped: it can no longer replace a worker
                self._stop(pid)
            yield sorted(self.stopped_pids)
        finally:
            self.resume()

    def resume(self) -> None:
        """SIGCONTs every process `paused()` stopped (a stopped process would not even act on SIGTERM)."""
        for pid in sorted(self.stopped_pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped_pids.discard(pid)

    def _stop(self, pid: int) -> None:
        self.stopped_pids.add(pid)  # first: a stop that lands must always be undone by resume()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:  # gone already: nothing to pause
            self.stopped_pids.discard(pid)

    def close(self) -> None:
        self.resume()  # in case an interrupt cut a pause short
        for part in (self.completions, self.sampler):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # noqa: BLE001 - keep cleaning up
                    print(f"  cleanup: {exc}")
        self.stack.stop()
        for pid in self.pool_pids:  # pool workers outliving a killed resizer
            if "services.cli resizer" in _cmdline(pid):  # forked workers keep the resizer's command line
                os.kill(pid, signal.SIGKILL)
        if not self.keep:
            drop_environment(self.settings)

    def _pid_of(self, name: str) -> Any:
        return lambda: [self.stack.processes[name].pid] if name in self.stack.processes else []

    def _api_processes(self) -> list[int]:
        api = self.stack.processes.get("api")
        return [api.pid, *descendants(api.pid)] if api else []  # with THUMBS_API_WORKERS > 1, its workers

    def _pool(self) -> list[int]:
        pids = [pid for name in self.resizers if (resizer := self.stack.processes.get(name)) for pid in descendants(resizer.pid)]
        self.pool_pids.update(pids)
        return pids


def _port(bootstrap: str) -> int:
    first = bootstrap.split(",")[0].strip()
    return int(first.rsplit(":", 1)[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""

