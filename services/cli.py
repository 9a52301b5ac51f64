"""`thumbs`: one command for every process and the set-up steps (the local servers come with thumbs-devtools)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points, version
from typing import Any

from services.api import key_commands as keys
from services.common import logs
from services.common.settings import Settings, SettingsError, documented, effective
from services.ops import commands as ops
from services.replay import commands as replay
from services.replay import dlq_commands as dlq

# Other installed distributions add subcommands here (thumbs-devtools: `servers` and `run`); a production install
# has none, so local tooling cannot run there.
COMMAND_GROUP = "thumbs.commands"


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from services.api.app import MULTIPROCESS_DIR, create_app
    from services.common.cpu import usable_cores

    options: dict[str, Any] = {"host": settings.api_host, "port": settings.api_port, "log_level": "warning",
                               "loop": "uvloop", "http": "httptools"}
    workers = settings.api_workers or usable_cores()
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    # One process runs Python on one core at a time: several share the port. Each worker writes its metrics to
    # files in this folder (prometheus_client's multiprocess mode), which /metrics sums in whichever answers.
    metrics_dir = settings.state_dir / f"api-metrics-{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR] = str(metrics_dir)  # inherited by the workers, read as they import prometheus_client
    try:
        uvicorn.run("services.api.app:app_from_environment", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _stage(name: str) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, _args: argparse.Namespace) -> int:
        module = __import__(f"services.{name}.worker", fromlist=["main"])
        return int(module.main(settings))

    return run


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    from services.common.topics import ensure_topics

    report = ensure_topics(settings, apply=args.apply, dry_run=args.dry_run)
    for topic in report.topics:
        print(f"{topic.name}: {topic.summary()}")
    if report.applicable:
        print("thumbs topics: differences left as they are; `thumbs topics --apply` applies them", file=sys.stderr)
    return 0 if report.in_sync else 1


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from services.common.cassandra import migrate

    migrate(settings)
    print(f"keyspace {settings.keyspace} is up to date")
    return 0


def _settings(settings: Settings, _args: argparse.Namespace) -> int:
    docs = {name: doc for name, _default, doc in documented()}
    for name, value in effective(settings):
        print(f"{name}={value}\n    {docs[name]}")
    return 0


COMMANDS = {
    "api": ("serve the HTTP API", _api),
    "fetcher": ("run a fetcher stage process", _stage("fetcher")),
    "resizer": ("run a resizer stage process", _stage("resizer")),
    "projector": ("run a projector stage process", _stage("projector")),
    "notifier": ("run a notifier stage process (completion webhooks)", _stage("notifier")),
    "stats": ("run a stats stage process (live statistics, GET /stats)", _stage("stats")),
    "topics": ("create or verify the Kafka topics and their configs", _topics),
    "migrate": ("create or update the Cassandra keyspace and tables", _migrate),
    "settings": ("list every THUMBS_* setting with its effective value (secrets masked)", _settings),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thumbs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('thumbs')}")
    commands = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (help_text, handler) in COMMANDS.items():
        parsers[name] = commands.add_parser(name, help=help_text)
        parsers[name].set_defaults(handler=handler)
    topics_mode = parsers["topics"].add_mutually_exclusive_group()
    topics_mode.add_argument("--dry-run", action="store_true", help="only report: create and change nothing")
    topics_mode.add_argument("--apply", action="store_true",
                             help="also change existing topics: set differing configs, grow partitions")
    replay.register(commands)
    dlq.register(commands)
    ops.register(commands)
    keys.register(commands)
    register_installed(commands)
    return parser


def register_installed(subparsers: Any) -> None:
    """Subcommands of other installed distributions: each entry point names a `register(subparsers)` function."""
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(subparsers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"thumbs: {exc}", file=sys.stderr)
        return 2
    logs.configure(process=settings.log_name or args.command, log_format=settings.log_format, level=settings.log_level)
    return int(args.handler(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
