"""The broker seam: everything Ticks does with its broker, for Redis and for RabbitMQ.

``BROKER_URL`` chooses the broker (``amqp://`` RabbitMQ, ``redis://`` / ``rediss://`` Redis);
without it ``REDIS_URL``, then Redis on localhost. app/ and workers/ call ``current()`` (or
``for_url``) and never branch on the broker themselves.

- Redis keeps no delivery count and loses a message taken by a worker that dies before it
  records it as held, so on Redis every publish is recorded in the in-flight ledger
  (workers/brokers/ledger.py) in the same transaction, a sweeper republishes what was lost, and a
  counter beside the queue counts redeliveries.
- RabbitMQ does all of that natively: the queue is a durable quorum queue that counts
  deliveries and dead-letters a message returned more than ``x-delivery-limit`` times to a
  dead-letter exchange (the worker stores those in the ``dead_letters`` table); every publish
  waits for the broker's confirm; a dead worker's unacknowledged messages are requeued as soon
  as its connection drops.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery import Celery
from kombu import Exchange, Queue

from workers.brokers import ledger
from workers.brokers.messages import create_task_message
from workers.core.settings import DEFAULT_REDIS_URL, DELIVERY_QUEUE, QUEUE

log = logging.getLogger(__name__)

RABBITMQ_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
# Everything a broker that is down, unreachable, blocked or silent raises at a publisher.
ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    kombu.exceptions.LimitExceeded,  # every pooled publisher connection busy past the timeout
    redis.exceptions.RedisError,
    amqp.exceptions.AMQPError,
    OSError,
    socket.timeout,
)
# A connection found dead at a publish: its socket reset, broken or closed under it.
DEAD_CONNECTION: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    amqp.exceptions.RecoverableConnectionError,
)
# What readiness writes to prove the broker takes writes (a key on Redis, an unroutable
# message on RabbitMQ): nothing consumes it.
READINESS_PROBE = "ticks.readiness-probe"
# A message whose worker died while running it is redelivered (acks_late); after this many
# deliveries it is dead-lettered instead of killing workers forever.
MAX_DELIVERIES = 3


def broker_url(env: Mapping[str, str] = os.environ) -> str:
    """Return the broker's URL: BROKER_URL, else REDIS_URL, else Redis on localhost."""
    return env.get("BROKER_URL") or env.get("REDIS_URL") or DEFAULT_REDIS_URL


def is_rabbitmq(url: str) -> bool:
    return url.startswith(RABBITMQ_SCHEMES)


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as the broker sees it at one moment (None: this broker cannot tell)."""

    waiting: int  # task messages on the queue
    oldest_age: float | None  # seconds the oldest waiting message has waited (0 when none)
    unacked: int | None  # taken by workers, not yet finished
    inflight: int | None  # published and not yet finished (the in-flight ledger)


class RedisBroker:
    """Redis: the in-flight ledger, its sweeper and a delivery counter make it safe."""

    name = "redis"
    limits_deliveries = False  # the task counts deliveries itself
    DELIVERY_KEY_TTL = 7 * 24 * 3600

    def configure(self, celery: Celery, visibility_timeout: int, **transport_options: Any) -> None:
        options = {"visibility_timeout": visibility_timeout, **transport_options}
        for name, default in LEDGER_FOLLOWS.items():
            if options.get(name, default) != default:
                raise RuntimeError(
                    f"broker transport option {name}={options[name]!r} is not supported: the "
                    "in-flight ledger (workers/brokers/ledger.py) reads kombu's Redis keys by "
                    "their default names; remove it (use a Redis database of its own instead of a "
                    "key prefix)"
                )
        celery.conf.broker_transport_options = options
        url = urlsplit(celery.conf.broker_url or "")
        if url.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(url.query):
            # kombu checks no certificate for a bare rediss:// URL; Ticks does, unless the URL
            # says otherwise (?ssl_cert_reqs=none for a platform's self-signed certificate,
            # or ?ssl_ca_certs=/path/ca.pem&ssl_cert_reqs=required).
            celery.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}

    def check_server(self, celery: Celery) -> None:
        """Warn when Redis may evict task messages (a lost callback each)."""
        try:
            with celery.connection_for_write() as conn:
                policy = conn.default_channel.client.config_get("maxmemory-policy")
        except ERRORS as exc:  # managed Redis often refuses CONFIG: nothing to say then
            log.debug("maxmemory-policy not readable: %s", exc)
            return
        value = policy.get("maxmemory-policy", "noeviction")
        if value.startswith("allkeys"):
            log.warning(
                "Redis maxmemory-policy is %s: under memory pressure Redis may evict task "
                "messages (callbacks already answered 200). Set maxmemory-policy noeviction.",
                value,
            )

    def publish(
        self,
        celery: Celery,
        task_name: str,
        payload: Any,
        *,
        task_id: str,
        summary: str,
        timeout: float = 5,
    ) -> None:
        """Put a task message on the queue with its ledger entry; raise the broker's errors."""
        ledger.publish(
            celery, task_name, payload, task_id=task_id, summary=summary, timeout=timeout
        )

    def deliveries(self, celery: Celery, request: Any) -> int:
        """Return which delivery of its message this run is.

        A first delivery is known without asking Redis: kombu marks every message it puts
        back on the queue (a dead worker's, a rejected one) ``redelivered``. Only those are
        counted, so the common case costs no round trip: count + 1 is the delivery.
        """
        if not (request.delivery_info or {}).get("redelivered"):
            return 1
        key = self.delivery_key(request.id)
        try:
            with celery.pool.acquire(block=True, timeout=5) as conn:
                pipe = conn.default_channel.client.pipeline()
                count, _ = pipe.incr(key).expire(key, self.DELIVERY_KEY_TTL).execute()
                return int(count) + 1
        except (OSError, redis.exceptions.RedisError) as exc:
            log.warning("delivery count unavailable for %s: %s", request.id, exc)
            return 2

    @staticmethod
    def delivery_key(task_id: str) -> str:
        return f"ticks:deliveries:{task_id}"

    def settle(self, celery: Celery, task_id: str, finished: bool) -> None:
        """Drop the delivery count; once finished, the message's ledger entry too."""
        try:
            with celery.pool.acquire(block=True, timeout=5) as conn:
                pipe = conn.default_channel.client.pipeline().delete(self.delivery_key(task_id))
                if finished:
                    ledger.finish(pipe, task_id)
                pipe.execute()
        except (OSError, redis.exceptions.RedisError):
            # The count expires by itself; a ledger entry left behind makes the sweeper
            # publish the message again, which applies nothing twice.
            log.warning("could not clear delivery records of %s", task_id)

    def snapshot(self, celery: Celery, timeout: float) -> QueueSnapshot | None:
        """Read the queue from Redis, or return None when it does not answer."""
        try:
            with celery.pool.acquire(block=True, timeout=timeout) as conn:
                client = conn.default_channel.client
                depth, oldest, unacked, inflight = (
                    client.pipeline(transaction=False)
                    .llen(QUEUE)
                    .lindex(QUEUE, -1)
                    .hlen(ledger.KOMBU_UNACKED)
                    .zcard(ledger.INFLIGHT)
                    .execute()
                )
                oldest_id = ledger.task_id_of(oldest) if oldest is not None else None
                published = client.zscore(ledger.INFLIGHT, oldest_id) if oldest_id else None
        except ERRORS:
            return None
        age = max(0.0, time.time() - published) if published else 0.0
        return QueueSnapshot(waiting=depth, oldest_age=age, unacked=unacked, inflight=inflight)

    def ping(self, celery: Celery) -> None:
        """Raise unless Redis takes a write: a PING is answered by a Redis at its maxmemory
        (noeviction) or a read-only replica, which refuse every publish."""
        with celery.connection_for_write() as conn:
            conn.default_channel.client.set(READINESS_PROBE, "1", ex=60)


# kombu's Redis transport options the ledger depends on, with the only values it follows.
LEDGER_FOLLOWS: dict[str, Any] = {
    "global_keyprefix": "",
    "unacked_key": "unacked",
    "unacked_index_key": "unacked_index",
    "unacked_mutex_key": "unacked_mutex",
}

# RabbitMQ's names: the task queue, its dead-letter exchange and the queue behind it.
DEAD_LETTER_EXCHANGE = "ticks.dead-letter"
DEAD_LETTER_QUEUE = "ticks.dead-letters"


def task_exchange() -> Exchange:
    return Exchange(QUEUE, type="direct", durable=True)


def task_queue() -> Queue:
    """The durable quorum queue of Ticks' task messages (RabbitMQ)."""
    return Queue(
        QUEUE,
        exchange=task_exchange(),
        routing_key=QUEUE,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            # Returned more than this many times (a worker died holding it): dead-lettered,
            # after 3 deliveries as on Redis. A message handed back on shutdown or after a
            # long database outage counts too (as on Redis): dead-lettered then, it waits in
            # dead_letters for a replay, never lost.
            "x-delivery-limit": MAX_DELIVERIES - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            # at-least-once: a dead letter leaves the queue only once the dead-letter queue
            # has it (needs reject-publish overflow).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def delivery_queue() -> Queue:
    """The outbound webhooks' queue (RabbitMQ). Its tasks only say "send this leased
    delivery": one lost is sent again when its lease expires, so no dead-lettering."""
    return Queue(
        DELIVERY_QUEUE,
        exchange=task_exchange(),
        routing_key=DELIVERY_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def dead_letter_queue() -> Queue:
    return Queue(
        DEAD_LETTER_QUEUE,
        exchange=Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True),
        routing_key=DEAD_LETTER_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


class RabbitBroker:
    """RabbitMQ: a quorum queue with a delivery limit and dead-lettering, publisher confirms."""

    name = "rabbitmq"
    limits_deliveries = True  # the queue dead-letters past x-delivery-limit

    def configure(self, celery: Celery, visibility_timeout: int, **transport_options: Any) -> None:
        # kombu's connection failover options apply to any transport; Redis' socket timeouts
        # mean nothing to py-amqp (the publish deadline is given to each publish instead).
        failover = {
            key: value
            for key, value in transport_options.items()
            if key in ("max_retries", "interval_start", "interval_step", "interval_max")
        }
        celery.conf.update(
            task_queues=[task_queue(), delivery_queue()],
            task_default_exchange=QUEUE,
            task_default_routing_key=QUEUE,
            # Every basic.publish waits for the broker's confirm (kombu/py-amqp).
            broker_transport_options={"confirm_publish": True, **failover},
            # A worker's heartbeats let RabbitMQ see a dead connection (and requeue what it
            # held) within seconds even when no FIN arrives.
            broker_heartbeat=10,
        )

    def publish(
        self,
        celery: Celery,
        task_name: str,
        payload: Any,
        *,
        task_id: str,
        summary: str,
        timeout: float = 5,
    ) -> None:
        """Publish a persistent task message and wait for RabbitMQ's confirm.

        Raises the broker's errors when it is down, refuses (its memory or disk alarm blocks
        publishers) or does not confirm within ``timeout``.
        """
        headers, properties, body = create_task_message(
            celery, task_name, payload, task_id, summary
        )
        started = time.monotonic()
        try:
            self.publish_once(celery, body, headers, properties, timeout)
        except DEAD_CONNECTION as exc:
            # A pooled connection that died while idle (the socket reset or closed under it:
            # a proxy's or the node's idle timeout, a node restarted) fails at once: one more
            # try on a fresh connection, within the same deadline. A message published twice
            # this way (its confirm lost with the socket) is applied once.
            left = timeout - (time.monotonic() - started)
            if left < timeout / 2:
                raise
            log.info("publisher connection was dead (%s): publishing on a fresh one", exc)
            self.publish_once(celery, body, headers, properties, left)

    def publish_once(
        self,
        celery: Celery,
        body: Any,
        headers: dict[str, Any],
        properties: dict[str, Any],
        timeout: float,
    ) -> None:
        with celery.producer_pool.acquire(block=True, timeout=timeout) as producer:
            try:
                producer.publish(
                    body,
                    exchange=task_exchange(),
                    routing_key=QUEUE,
                    declare=[task_queue(), dead_letter_queue()],
                    headers=headers,
                    serializer="json",
                    delivery_mode=2,
                    # Unroutable (the queue deleted behind a connection that declared it
                    # once): RabbitMQ returns it and py-amqp raises, instead of confirming a
                    # message that went nowhere.
                    mandatory=True,
                    retry=False,
                    timeout=timeout,
                    confirm_timeout=timeout,
                    **properties,
                )
            except BaseException:
                # The connection may be half dead (a missed confirm, a broken socket) or
                # believe a deleted queue declared: drop it, so the next publish connects
                # and declares afresh.
                producer.connection.collect()
                raise

    def deliveries(self, celery: Celery, request: Any) -> int:
        """Return which delivery this run is: the quorum queue's x-delivery-count, + 1."""
        count = getattr(request, "x-delivery-count", None) or (request.headers or {}).get(
            "x-delivery-count"
        )
        return int(count or 0) + 1

    def settle(self, celery: Celery, task_id: str, finished: bool) -> None:
        """Nothing to clear: RabbitMQ keeps the count and forgets it with the message."""

    def snapshot(self, celery: Celery, timeout: float) -> QueueSnapshot | None:
        """Read the queue's depth from RabbitMQ (AMQP tells ready messages, not their age
        nor how many are unacknowledged), or return None when it does not answer."""
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                channel = conn.channel()
                try:
                    _, waiting, _ = channel.queue_declare(QUEUE, passive=True)
                finally:
                    channel.close()
        except amqp.exceptions.NotFound:  # nothing published yet
            return QueueSnapshot(waiting=0, oldest_age=None, unacked=None, inflight=None)
        except ERRORS:
            return None
        return QueueSnapshot(waiting=waiting, oldest_age=None, unacked=None, inflight=None)

    def ping(self, celery: Celery, timeout: float = 2) -> None:
        """Raise unless RabbitMQ confirms two publishes in turn, each within ``timeout``:
        under a memory or disk alarm it still opens connections and channels, and even takes a
        connection's first publish, then reads nothing more from it ("blocking", then
        "blocked": RabbitMQ's alarms page). One probe on a new connection would pass.

        The probes go to Ticks' own exchange (the one its publishes need writing to, declared
        as they declare it) under a routing key no queue is bound to: RabbitMQ drops them and
        confirms (unroutable, not mandatory), so nothing is left anywhere."""
        with celery.producer_pool.acquire(block=True, timeout=timeout) as producer:
            try:
                for _ in range(2):
                    producer.publish(
                        b"",
                        exchange=task_exchange(),
                        routing_key=READINESS_PROBE,
                        declare=[task_exchange()],
                        delivery_mode=1,
                        retry=False,
                        timeout=timeout,
                        confirm_timeout=timeout,
                    )
            except BaseException:
                producer.connection.collect()  # blocked or half dead: the next one connects
                raise

    def check_server(self, celery: Celery) -> None:
        """Nothing to check: RabbitMQ's alarms block publishers, which Ticks answers 503."""


Broker = RedisBroker | RabbitBroker


def for_url(url: str) -> Broker:
    return RabbitBroker() if is_rabbitmq(url) else RedisBroker()


def current() -> Broker:
    """The broker of this process' configuration."""
    return for_url(broker_url())


def dead_letter_record(body: Any, headers: Mapping[str, Any]) -> dict[str, Any]:
    """Return the dead_letters row of a task message RabbitMQ dead-lettered."""
    args = body[0] if isinstance(body, list | tuple) and body else []
    deaths = headers.get("x-death") or [{}]
    reason = deaths[0].get("reason", "unknown") if isinstance(deaths[0], dict) else "unknown"
    deliveries = int(headers.get("x-delivery-count") or MAX_DELIVERIES)
    return {
        "task_id": headers.get("id") or "unknown",
        "task_name": headers.get("task", "unknown"),
        "payload": args[0] if args else body,
        "error": (
            f"RabbitMQ dead-lettered it ({reason}): delivered {deliveries} times, the worker "
            "never finished it"
        ),
        "deliveries": deliveries,
    }
