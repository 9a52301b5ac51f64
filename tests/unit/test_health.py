"""A stage's liveness and readiness, as the orchestrator's probes see them, and the pool sizing from the
container's CPU quota."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.common import cpu
from services.common.health import Health, serve


@dataclass
class Member:
    last_poll: float = 100.0
    joined: bool = True


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_live_while_every_loop_polls_and_not_once_one_stalls_past_the_limit() -> None:
    clock, members = Clock(110.0), [Member(), Member(last_poll=105.0)]
    health = Health(members, stale_after=30, clock=clock)
    assert health.live().ok
    clock.now = 131.0  # the first member has not come round for 31 s
    verdict = health.live()
    assert not verdict.ok and "31 s" in verdict.reason


def test_ready_needs_every_member_in_the_group_and_every_dependency() -> None:
    members = [Member(), Member(joined=False)]
    up = {"cassandra": True}
    health = Health(members, {"cassandra": lambda: up["cassandra"]})
    assert health.ready().reason == "1 of 2 consumers have no group assignment yet"
    members[1].joined = True
    assert health.ready().ok
    up["cassandra"] = False
    assert health.ready().reason == "cassandra not reachable"

    def broken() -> bool:
        raise RuntimeError("driver closed")

    assert "driver closed" in Health(members, {"cassandra": broken}).ready().reason


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_probe_server_answers_200_or_503_with_a_one_line_reason_and_serves_metrics() -> None:
    members = [Member(joined=False)]
    clock = Clock(100.0)
    port = _free_port()
    server = serve("127.0.0.1", port, Health(members, clock=clock))
    assert server is not None
    try:
        base = f"http://127.0.0.1:{port}"
        live, ready = httpx.get(base + "/livez"), httpx.get(base + "/readyz")
        assert live.status_code == 200 and live.json() == {"status": "ok", "reason": "polling"}
        assert ready.status_code == 503 and ready.json()["status"] == "fail"
        assert len(ready.text.splitlines()) == 1 and json.loads(ready.text)["reason"].endswith("no group assignment yet")
        clock.now = 200.0
        assert httpx.get(base + "/livez").status_code == 503
        assert "thumbs_events_in_total" in httpx.get(base + "/metrics").text
    finally:
        server.shutdown()
        server.server_close()


def test_port_zero_serves_nothing() -> None:
    assert serve("127.0.0.1", 0, Health([])) is None


@pytest.mark.parametrize(("line", "cores"), [
    ("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("garbage", None),
])
def test_cgroup_v2_cpu_max_is_read_as_cores(line: str, cores: float | None) -> None:
    assert cpu.quota_cores(line) == cores


def _cgroup_v2(tmp_path: Path, leaf: str, parent: str | None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "cpu.max").write_text(leaf)
    if parent is not None:
        (root / "kubepods" / "cpu.max").write_text(parent)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    return root, proc


def test_the_pool_follows_the_tightest_quota_on_the_cgroup_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _pid: set(range(64)))  # a big node
    root, proc = _cgroup_v2(tmp_path, "150000 100000", None)
    assert cpu.usable_cores(root, proc) == 2  # 1.5 CPUs: rounded up, the quota still applies to the total
    root, proc = _cgroup_v2(tmp_path / "b", "max 100000", "300000 100000")
    assert cpu.usable_cores(root, proc) == 3
    root, proc = _cgroup_v2(tmp_path / "c", "max 100000", None)
    assert cpu.usable_cores(root, proc) == 64


def test_cgroup_v1_quota_and_a_missing_cgroup_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    root = tmp_path / "cgroup"
    (root / "cpu" / "docker" / "c1").mkdir(parents=True)
    (root / "cpu" / "docker" / "c1" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "docker" / "c1" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/docker/c1\n2:cpu,cpuacct:/docker/c1\n0::/\n")
    assert cpu.usable_cores(root, proc) == 1
    assert cpu.usable_cores(root, tmp_path / "absent") == 4
