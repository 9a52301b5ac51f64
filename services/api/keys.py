"""API keys: their format, how a presented key is checked against the stored record, and rates like `600/min`.

A key reads `thk_<name>_<secret>`: the name finds the record, the secret proves possession. Only the secret's
SHA-256 is stored. A fast hash is enough here, unlike for passwords: the secret is 256 random bits, so there is
nothing to guess from its hash.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets

from services.common.model import ApiKey

PREFIX = "thk_"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class KeyInputError(ValueError):
    """A name or rate an operator typed is not valid; the message says why."""


class Verdict(enum.Enum):
    VALID = "valid"
    UNKNOWN = "unknown"  # malformed, no such name, or the wrong secret: told apart only in the log
    REVOKED = "revoked"


def new_key(name: str) -> tuple[str, str]:
    """(the key to hand out, the SHA-256 of its secret to store)."""
    check_name(name)
    secret = secrets.token_urlsafe(32)
    return f"{PREFIX}{name}_{secret}", _digest(secret)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise KeyInputError(f"key name {name!r}: use 1-64 lowercase letters, digits and dashes, starting with a letter or digit")
    return name


def name_of(presented: str) -> str | None:
    """The name a presented key claims, or None when it is not shaped like one of ours."""
    if not presented.startswith(PREFIX):
        return None
    name, _, secret = presented[len(PREFIX):].partition("_")
    return name if secret and NAME.fullmatch(name) else None


def verify(presented: str, record: ApiKey | None) -> Verdict:
    name = name_of(presented)
    if record is None or name != record.name:
        return Verdict.UNKNOWN
    secret = presented[len(PREFIX) + len(name) + 1:]
    if not hmac.compare_digest(_digest(secret), record.secret_sha256):  # constant time: no timing oracle
        return Verdict.UNKNOWN
    return Verdict.REVOKED if record.revoked_at is not None else Verdict.VALID


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def parse_rate(text: str) -> int:
    """`600/min`, `10/s`, `36000/hour` → requests per minute (at least 1)."""
    count, _, unit = text.strip().partition("/")
    seconds = _UNITS.get(unit.strip().lower())
    if not count.strip().isdigit() or seconds is None or int(count) <= 0:
        raise KeyInputError(f"rate {text!r}: write it as <requests>/<s|min|hour>, e.g. 600/min")
    per_minute = int(count) * 60 / seconds
    if per_minute < 1:
        raise KeyInputError(f"rate {text!r} is under one request per minute")
    return int(per_minute)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
