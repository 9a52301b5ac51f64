"""Configuration, read once from THUMBS_* environment variables into one frozen object."""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "THUMBS_"


class SettingsError(ValueError):
    """A THUMBS_* variable has a value that cannot be used."""


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _setting(default: Any, doc: str, cast: Callable[[str], Any] | None = None, *, choices: tuple[str, ...] = (),
             secret: bool = False) -> Any:
    """A field read from THUMBS_<NAME>; `choices` are checked at load; a secret is masked wherever it is shown."""
    return field(default=default, repr=not secret, metadata={"doc": doc, "cast": cast, "choices": choices, "secret": secret})


def _computed(factory: Callable[[], Any], shown: str, doc: str, cast: Callable[[str], Any] | None = None) -> Any:
    """A setting whose default is made when the settings are loaded; `shown` is how the docs print it."""
    return field(default_factory=factory, metadata={"doc": doc, "cast": cast, "choices": (), "secret": False, "shown": shown})


def _working_state_dir() -> Path:
    # The process's working directory, not the code's location: an installed package has no repository beside it.
    return Path.cwd() / ".thumbs"


@dataclass(frozen=True)
class Settings:
    """Every knob of every process. The environment name is THUMBS_ + the field name in upper case."""

    kafka_bootstrap: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers (host:port, comma-separated).")
    topic_prefix: str = _setting("", "Prefix for every topic and consumer group name (isolates environments and tests).")
    topic_partitions: int = _setting(6, "Partitions per pipeline topic, created by `thumbs topics`.")
    topic_retention_ms: int = _setting(7 * 24 * 3600 * 1000, "Retention of pipeline topics; replay works within it.")
    fetched_retention_ms: int = _setting(
        24 * 3600 * 1000, "Retention of thumbnail.fetched, which carries every source image (bytes on the brokers' disks)."
    )
    topic_replication_factor: int = _setting(1, "Replicas of each pipeline topic (3 on a production cluster).")
    topic_min_insync_replicas: int = _setting(1, "In-sync replicas an acks=all write needs (2 with replication factor 3).")
    kafka_security_protocol: str = _setting(
        "PLAINTEXT", "How clients reach Kafka.", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    )
    kafka_sasl_mechanism: str = _setting(
        "SCRAM-SHA-512", "SASL mechanism (with a SASL_* protocol).", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    kafka_sasl_username: str = _setting("", "SASL user name.")
    kafka_sasl_password: str = _setting("", "SASL password (never logged; masked by `thumbs settings`).", secret=True)
    kafka_ssl_ca_location: str = _setting("", "PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL).")
    cassandra_hosts: tuple[str, ...] = _setting(("127.0.0.1",), "Cassandra contact points (comma-separated).", _csv)
    cassandra_port: int = _setting(9042, "Cassandra native-protocol port.")
    keyspace: str = _setting("thumbs", "Cassandra keyspace.")
    cassandra_replication: str = _setting(
        "SimpleStrategy:1", "Keyspace replication: `SimpleStrategy:<rf>` or `NetworkTopologyStrategy:<dc>=<rf>,...`."
    )
    cassandra_consistency: str = _setting(
        "LOCAL_QUORUM", "Consistency level of reads and writes.",
        choices=("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"),
    )
    cassandra_local_dc: str = _setting("", "Datacenter whose nodes serve requests (empty: the first contact point's).")
    cassandra_username: str = _setting("", "Cassandra user (PasswordAuthenticator); empty: no authentication.")
    cassandra_password: str = _setting("", "Cassandra password (never logged; masked by `thumbs settings`).", secret=True)
    cassandra_ssl_ca_location: str = _setting("", "PEM file of the CA of the nodes' certificates; set, clients use TLS.")
    task_ttl_seconds: int = _setting(0, "TTL of task rows in seconds (0 keeps them forever).")
    api_host: str = _setting("127.0.0.1", "Address the HTTP API binds to (its /metrics is served there too).")
    metrics_host: str = _setting("127.0.0.1", "Address every stage's /metrics binds to (0.0.0.0 in a container).")
    api_port: int = _setting(8080, "Port of the HTTP API (its /metrics is served there too).")
    api_workers: int = _setting(
        1, "API processes serving the port together (0: one per core), each with its own Kafka and Cassandra clients; "
        "/metrics sums them all."
    )
    auth: str = _setting(
        "off", "`required`: POST and GET need `Authorization: Bearer <key>` (`thumbs keys create`), each task is seen "
        "only by the key that created it, and each key has a request rate; `off`: open, as before.",
        choices=("off", "required"),
    )
    key_rate: str = _setting("600/min", "Request rate of a key created without `--rate` (`<n>/s`, `/min` or `/hour`).")
    max_backlog: int = _setting(
        0, "Records of thumbnail.requested the fetchers may lag behind before POST /thumbnail answers 503 "
        "with Retry-After (0 turns the check off)."
    )
    sse_max_streams: int = _setting(
        1000, "Open GET /thumbnail/events streams per API process; beyond, 503 TOO_MANY_STREAMS with Retry-After."
    )
    sse_max_seconds: float = _setting(
        600.0, "Longest life of one GET /thumbnail/events stream: then a `timeout` event, and the client reconnects or polls."
    )
    max_waiting: int = _setting(
        1000, "Requests per API process that may wait for their task (`wait=`) at once; beyond, they answer at once."
    )
    api_cache_bytes: int = _setting(
        32 * 1024 * 1024, "Bytes of thumbnails each API process keeps in memory (least recently used out; 0: none): "
        "a thumbnail never changes, so a GET of one kept makes only its task-row read."
    )
    fetcher_metrics_port: int = _setting(9101, "Port of the fetcher's /metrics (0 turns it off).")
    resizer_metrics_port: int = _setting(9102, "Port of the resizer's /metrics (0 turns it off).")
    projector_metrics_port: int = _setting(9103, "Port of the projector's /metrics (0 turns it off).")
    notifier_metrics_port: int = _setting(9104, "Port of the notifier's /metrics (0 turns it off).")
    stats_metrics_port: int = _setting(9105, "Port of the stats stage's /metrics, /livez and /readyz (0 turns it off).")
    stats_port: int = _setting(9106, "Port of the stats stage's web views (GET /stats), on THUMBS_METRICS_HOST.")
    stats_url: str = _setting("http://127.0.0.1:9106", "Where the API asks the stats stage for GET /stats.")
    fetch_allow_networks: tuple[Any, ...] = _setting(
        (), "CIDRs the fetcher and webhooks may reach although they are private, loopback or link-local (comma-separated).", _networks
    )
    fetch_connect_timeout: float = _setting(5.0, "Seconds to open a connection to an image origin.")
    fetch_read_timeout: float = _setting(10.0, "Longest silence (seconds) while reading an origin's response.")
    fetch_total_timeout: float = _setting(30.0, "Seconds for a whole download, redirects included.")
    fetch_max_bytes: int = _setting(20 * 1024 * 1024, "Largest source image in bytes (enforced while streaming).")
    fetch_max_redirects: int = _setting(5, "Redirects followed per download.")
    fetch_concurrency: int = _setting(64, "Downloads in flight per fetcher process.")
    fetch_memory_bytes: int = _setting(
        128 * 1024 * 1024, "Bytes of source images a fetcher process holds at once, from download to publish: each "
        "download reserves its Content-Length (THUMBS_FETCH_MAX_BYTES when undeclared or compressed) and waits while "
        "they are spent. Measured worst case: the process peaks at about 70 MiB + 2.2 × this (bodies are copied on "
        "their way to Kafka)."
    )
    fetch_max_attempts: int = _setting(4, "Attempts for transient fetch failures (timeouts, 429, 5xx) before FAILURE.")
    fetch_retry_base_seconds: float = _setting(1.0, "First retry delay; doubles per attempt, with jitter.")
    webhook_secret: str = _setting(
        "", "Key that signs completion webhooks (X-Thumbs-Signature); empty: POST /thumbnail refuses callback_url "
        "(never logged; masked by `thumbs settings`).", secret=True,
    )
    webhook_max_attempts: int = _setting(5, "Attempts to deliver a completion webhook (non-2xx, timeout, no connection) before it is given up.")
    webhook_retry_base_seconds: float = _setting(5.0, "First webhook retry delay; doubles per attempt, with jitter.")
    webhook_timeout_seconds: float = _setting(10.0, "Seconds for one webhook delivery, connecting included.")
    max_pixels: int = _setting(50_000_000, "Largest source image in pixels, checked from the header before decoding.")
    max_frames: int = _setting(1000, "Most frames an animated source may declare (only the first is rendered).")
    resizer_workers: int = _setting(
        1, "Resize processes per resizer (0 = one per usable core: the CPUs it may run on, capped by its container's "
        "CPU quota). Scale with resizers rather than with this: one resizer per core, each with one resize process, "
        "measured faster than one resizer handing every image to several."
    )
    resizer_in_flight_bytes: int = _setting(
        128 * 1024 * 1024, "Bytes of source images a resizer works on at once (plus one image), up to 12 records per "
        "resize process: while some render, the others wait on Cassandra and Kafka."
    )
    instance: str = _setting(
        "", "Unique name of this stage process (e.g. a StatefulSet pod name): Kafka static group membership, so "
        "a restart within the session timeout moves no partitions. Empty: dynamic membership."
    )
    log_format: str = _setting(
        "auto", "Log lines as `json` (for a collector), `text` (for a person), or `auto`: text on a terminal, else JSON.",
        choices=("auto", "json", "text"),
    )
    log_level: str = _setting("INFO", "Lowest level logged.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_name: str = _setting("", "Name on this process's log lines (empty: the command, e.g. `fetcher`); `thumbs run` sets it per instance.")
    renderer_version: int = _setting(1, "Bump to re-render every thumbnail on the next replay of thumbnail.fetched.")
    state_dir: Path = _computed(
        _working_state_dir, "./.thumbs", "Folder for local server data, logs, caches and worker state "
        "(`.thumbs` in the working directory, made absolute at load: `<repo>/.thumbs` when run from the repository root).",
        Path,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            cast = f.metadata["cast"] or _cast_for(f.type)
            try:
                values[f.name] = cast(raw)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}{f.name.upper()}={raw!r}: {exc}") from None
            choices = f.metadata["choices"]
            if choices and values[f.name] not in choices:
                raise SettingsError(f"{PREFIX}{f.name.upper()}={raw!r}: use one of {', '.join(choices)}")
        return cls(**values)

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def group(self, stage: str) -> str:
        return f"{self.topic_prefix}thumbs-{stage}"


def _cast_for(type_name: Any) -> Callable[[str], Any]:
    casts: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _bool, "str": str}
    return casts[str(type_name)]


def effective(settings: Settings) -> list[tuple[str, str]]:
    """(variable, value) for every setting, secrets masked, for `thumbs settings`."""
    rows = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        rows.append((PREFIX + f.name.upper(), "********" if f.metadata["secret"] and value else shown))
    return rows


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the README table and `thumbs settings`."""
    rows = []
    for f in fields(Settings):
        default = f.metadata.get("shown", f.default)
        if isinstance(default, tuple):
            default = ",".join(str(d) for d in default)
        rows.append((PREFIX + f.name.upper(), str(default), f.metadata["doc"]))
    return rows
