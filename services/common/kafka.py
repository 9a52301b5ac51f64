"""Kafka edge shared by every process: client settings and an awaitable confluent-kafka producer."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from .events import encode
from .model import Event, Record
from .settings import Settings
from .topic_plan import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class PublishError(Exception):
    """Kafka did not acknowledge a record in time (broker down or unreachable)."""


def headers_of(message: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers; a header without a value reads as b"" (librdkafka gives a list of pairs)."""
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs]


def record_of(message: Message) -> Record:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None  # set on every consumed record
    return Record(topic, partition, offset, message.timestamp()[1], message.key(), message.value(), tuple(headers_of(message)))


ClientConfig = dict[str, str | int | float | bool]


def client_config(settings: Settings) -> ClientConfig:
    """What every producer, consumer and admin client shares: where the brokers are and how to reach them."""
    config: ClientConfig = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "thumbs",
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        config |= {
            "sasl.mechanisms": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": settings.kafka_sasl_password,
        }
    if settings.kafka_security_protocol.endswith("SSL") and settings.kafka_ssl_ca_location:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


class KafkaPublisher:
    """Produces records and lets coroutines await Kafka's acknowledgement (acks=all, idempotent)."""

    def __init__(self, settings: Settings, *, delivery_timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._producer = Producer(
            {
                **client_config(settings),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "compression.type": "none",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "socket.connection.setup.timeout.ms": 3000,
            }
        )
        self._settled: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], KafkaError | None]] = []
        self._settled_lock = threading.Lock()
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        """One wake-up of the event loop per batch of acknowledgements, not one per record."""
        with self._settled_lock:
            batch, self._settled = self._settled, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], KafkaError | None]]] = {}
        for loop, future, err in batch:
            by_loop.setdefault(loop, []).append((future, err))
        for loop, settled in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle_all, settled)

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None) -> None:
        """Returns once the record is acknowledged by all in-sync replicas; raises PublishError otherwise."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: object) -> None:  # runs on the delivery thread
            with self._settled_lock:
                self._settled.append((loop, acked, err))

        for _ in range(200):
            try:
                self._producer.produce(topic, value, key, headers=list(headers or ()), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let the delivery thread drain it
                await asyncio.sleep(0.01)
            except KafkaException as exc:
                raise PublishError(str(exc)) from None
        else:
            raise PublishError("local producer queue stayed full")
        await acked

    async def publish_event(self, event: Event, headers: Headers | None = None, *, topic: str | None = None) -> None:
        record = encode(event)
        await self.publish(self._settings.topic(topic or event.type), event.key, record.value, [*(headers or ()), *record.headers])

    def reachable(self, timeout: float = 2.0) -> bool:
        try:
            self._producer.list_topics(timeout=timeout)
            return True
        except KafkaException:
            return False

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._running = False
        self._poller.join(timeout=1)


def _settle_all(settled: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for future, err in settled:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(PublishError(err.str()))


# Desired state of the pipeline topics, compared with what the brokers have. Pure: no broker is asked here.
