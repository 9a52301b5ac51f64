"""`thumbs servers start|stop|status|env|kill|logs`: the command-line face of the local servers."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from typing import Any

from services.common.settings import PREFIX, Settings

from . import tls
from .cassandra import DATACENTER, node_hosts, server_material
from .kafka import HOST, broker_port
from .lifecycle import ServersError, all_servers, describe, ensure_running, stop_servers
from .process import running_pid, tail
from .topology import Topology, TopologyError, choose, current, topology_file


def start(settings: Settings, args: argparse.Namespace) -> int:
    began = time.monotonic()
    try:
        topology = choose(settings, getattr(args, "kafka_brokers", None), getattr(args, "cassandra_nodes", None),
                          getattr(args, "secure", None))
        ensure_running(settings, print, topology)
    except (TopologyError, ServersError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"servers ready after {time.monotonic() - began:.1f} s (`thumbs servers stop` stops them)")
    if topology.clustered or topology.secure:
        print('point the service and the tests at them with: eval "$(thumbs servers env)"')
    return 0


def stop(settings: Settings, args: argparse.Namespace) -> int:
    stop_servers(all_servers(settings), print)
    if getattr(args, "wipe", False):
        shutil.rmtree(settings.state_dir / "servers", ignore_errors=True)
        print(f"deleted {settings.state_dir / 'servers'}")
    return 0


def status(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    states = [describe(server) for server in all_servers(settings)]
    for _, line in states:
        print(line)
    return 0 if all(answers for answers, _ in states) else 1


def kill(settings: Settings, args: argparse.Namespace) -> int:
    """SIGKILL one node, as a crash would; `thumbs servers start` brings it back."""
    servers = {server.name: server for server in all_servers(settings)}
    server = servers.get(args.node)
    if server is None:
        print(f"no node {args.node!r}; nodes: {', '.join(servers)}", file=sys.stderr)
        return 2
    pid = running_pid(server.layout.pid_file, server.main_class)
    if pid is None:
        print(f"{server.name}: not running", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGKILL)
    print(f"{server.name}: killed pid {pid}")
    return 0


def environment(settings: Settings, topology: Topology) -> dict[str, str]:
    """THUMBS_* values that point the service and the tests at the local servers of `topology`."""
    brokers = [f"{HOST}:{broker_port(settings, n)}" for n in range(1, topology.kafka_brokers + 1)]
    topic_replicas = min(topology.kafka_brokers, 3)
    keyspace_replicas = min(topology.cassandra_nodes, 3)
    values = {
        "KAFKA_BOOTSTRAP": ",".join(brokers),
        "TOPIC_REPLICATION_FACTOR": str(topic_replicas),
        "TOPIC_MIN_INSYNC_REPLICAS": str(2 if topic_replicas >= 3 else 1),
        "CASSANDRA_HOSTS": ",".join(node_hosts(settings, topology.cassandra_nodes)),
        "CASSANDRA_PORT": str(settings.cassandra_port),
        "CASSANDRA_REPLICATION": f"NetworkTopologyStrategy:{DATACENTER}={keyspace_replicas}",
        "CASSANDRA_LOCAL_DC": DATACENTER,
        "STATE_DIR": str(settings.state_dir),
    }
    material = server_material(settings, topology)
    if material:
        values |= tls.client_settings(material)
    return {PREFIX + name: value for name, value in values.items()}


def env(settings: Settings, _args: argparse.Namespace) -> int:
    if not topology_file(settings).exists():
        print("no local servers set up yet: `thumbs servers start` first", file=sys.stderr)
        return 1
    for name, value in environment(settings, current(settings)).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def logs(settings: Settings, args: argparse.Namespace) -> int:
    target, lines = args.server, args.lines
    for server in all_servers(settings):
        if target is not None and server.name != target and not server.name.startswith(f"{target}-"):
            continue
        for log in (server.main_log, server.layout.output):
            text = tail(log, lines)
            if text.strip() or log == server.main_log:
                print(f"==> {log} <==\n{text or '(empty)'}\n")
    return 0


def register(subparsers: Any) -> None:
    """Adds `servers` and its actions to a parser's subcommands; each handler is (settings, args) -> int."""
    servers = subparsers.add_parser("servers", help="run a local Kafka and Cassandra as plain JVM processes")
    actions = servers.add_subparsers(dest="servers_action", required=True)
    begin = actions.add_parser("start", help="start every node that is not running (download jars on first use) "
                                             "and wait until all answer")
    begin.set_defaults(handler=start)
    begin.add_argument("--kafka-brokers", type=int, metavar="N",
                       help="brokers of a KRaft cluster (default: the shape set up before, else 1)")
    begin.add_argument("--cassandra-nodes", type=int, metavar="N",
                       help="nodes of a Cassandra ring (default: the shape set up before, else 1)")
    begin.add_argument("--secure", action=argparse.BooleanOptionalAction, default=None,
                       help="Kafka with SASL_SSL/SCRAM, Cassandra with logins and TLS, from a throwaway CA "
                            "(default: as set up before, else off)")
    end = actions.add_parser("stop", help="stop every node (SIGTERM, SIGKILL after 30 s)")
    end.set_defaults(handler=stop)
    end.add_argument("--wipe", action="store_true", help="then delete their data (to start over, or as another shape)")
    actions.add_parser("status", help="show every node, its pid, address and state").set_defaults(handler=status)
    actions.add_parser("env", help="print the export lines that point the service at the running servers") \
        .set_defaults(handler=env)
    crash = actions.add_parser("kill", help="SIGKILL one node (e.g. kafka-2, cassandra-3), as a crash would")
    crash.set_defaults(handler=kill)
    crash.add_argument("node")
    show = actions.add_parser("logs", help="print the end of the server logs")
    show.set_defaults(handler=logs)
    show.add_argument("server", nargs="?", help="only this node's logs (kafka-1), or one kind's (kafka, cassandra)")
    show.add_argument("-n", "--lines", metavar="N", type=int, default=40, help="lines per log (default 40)")
