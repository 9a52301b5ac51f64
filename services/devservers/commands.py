"""`thumbs servers start|stop|status|logs`: the command-line face of the local servers."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from services.common.settings import Settings

from .lifecycle import all_servers, describe, start_servers, stop_servers
from .process import tail


def start(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    began = time.monotonic()
    failures = start_servers(all_servers(settings), print)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        return 1
    print(f"servers ready after {time.monotonic() - began:.1f} s (`thumbs servers stop` stops them)")
    return 0


def stop(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    stop_servers(all_servers(settings), print)
    return 0


def status(settings: Settings, _args: argparse.Namespace | None = None) -> int:
    states = [describe(server) for server in all_servers(settings)]
    for _, line in states:
        print(line)
    return 0 if all(answers for answers, _ in states) else 1


def logs(settings: Settings, args: argparse.Namespace) -> int:
    target, lines = args.server, args.lines
    for server in all_servers(settings):
        if target not in (None, server.name):
            continue
        for log in (server.main_log, server.layout.output):
            text = tail(log, lines)
            if text.strip() or log == server.main_log:
                print(f"==> {log} <==\n{text or '(empty)'}\n")
    return 0


def register(subparsers: Any) -> None:
    """Adds `servers` with start|stop|status|logs to a parser's subcommands; each handler is (settings, args) -> int."""
    servers = subparsers.add_parser("servers", help="run a local Kafka and Cassandra as plain JVM processes")
    actions = servers.add_subparsers(dest="servers_action", required=True)
    actions.add_parser("start", help="start both (download jars on first use) and wait until they answer") \
        .set_defaults(handler=start)
    actions.add_parser("stop", help="stop both (SIGTERM, SIGKILL after 30 s)").set_defaults(handler=stop)
    actions.add_parser("status", help="show what runs and whether it answers").set_defaults(handler=status)
    show = actions.add_parser("logs", help="print the end of the server logs")
    show.set_defaults(handler=logs)
    show.add_argument("server", nargs="?", choices=("kafka", "cassandra"), help="only this server's logs")
    show.add_argument("-n", "--lines", metavar="N", type=int, default=40, help="lines per log (default 40)")
