"""`thumbs keys create | list | revoke`: API keys, stored hashed in Cassandra (services/api/keys.py)."""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from services.common.model import ApiKey
from services.common.settings import Settings

from . import keys

T = TypeVar("T")
DESCRIPTION = """API keys for THUMBS_AUTH=required. `create` prints the new key and its webhook signing secret once:
only a hash of the key is stored, so a lost key is revoked and replaced, never recovered. A key sees only the
tasks it created and may make its rate of requests per minute (across every API process). Revoked keys are
refused within seconds; their names are not reused."""


def register(commands: Any) -> None:
    """Adds `keys` with `create`, `list` and `revoke` to the `thumbs` sub-command parser."""
    parser = commands.add_parser("keys", help="create, list and revoke API keys", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it, once")
    create.add_argument("--name", required=True, type=_name, help="the client's name: lowercase letters, digits, dashes")
    create.add_argument("--rate", type=_rate, help="requests allowed, e.g. 600/min or 10/s (default THUMBS_KEY_RATE)")
    create.set_defaults(handler=run_create)
    listing = actions.add_parser("list", help="every key's name, rate, creation and revocation (never a secret)")
    listing.set_defaults(handler=run_list)
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name", type=_name)
    revoke.set_defaults(handler=run_revoke)


def run_create(settings: Settings, args: argparse.Namespace) -> int:
    rate = args.rate or keys.parse_rate(settings.key_rate)
    key, digest = keys.new_key(args.name)
    record = ApiKey(args.name, digest, rate, secrets.token_hex(32), datetime.now(UTC))
    if not _with_store(settings, lambda store: store.create(record)):
        print(f"thumbs keys: a key named {args.name} exists (revoked names are kept too); choose another name",
              file=sys.stderr)
        return 1
    print(f"key:            {key}\nwebhook secret: {record.webhook_secret}\nrate:           {rate}/min\n"
          "Both are shown only now: store them in the client's secret store.")
    return 0


def run_list(settings: Settings, _args: argparse.Namespace) -> int:
    print(f"{'NAME':<24} {'RATE/MIN':>8}  {'CREATED':<20} REVOKED")
    for record in _with_store(settings, lambda store: store.all()):
        revoked = f"{record.revoked_at:%Y-%m-%d %H:%M:%S}" if record.revoked_at else "-"
        print(f"{record.name:<24} {record.requests_per_minute:>8}  {record.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")
    return 0


def run_revoke(settings: Settings, args: argparse.Namespace) -> int:
    if not _with_store(settings, lambda store: store.revoke(args.name, datetime.now(UTC))):
        print(f"thumbs keys: no key named {args.name}", file=sys.stderr)
        return 1
    print(f"revoked {args.name}: refused by every API process within seconds")
    return 0


def _with_store(settings: Settings, use: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from services.common.cassandra import connect
    from services.common.repositories import ApiKeyRepository

    session = connect(settings)
    try:
        return asyncio.run(use(ApiKeyRepository(session, settings.keyspace)))
    finally:
        session.cluster.shutdown()


def _name(text: str) -> str:
    try:
        return keys.check_name(text)
    except keys.KeyInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> int:
    try:
        return keys.parse_rate(text)
    except keys.KeyInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
