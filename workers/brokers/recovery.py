"""The worker's side of a broker that goes away and comes back.

The failure this answers (issue 11): when Redis goes away while the worker holds messages,
Celery 5.7's consumer calls ``connection.collect()`` and then ``connection.close()``. In
``collect()``, kombu's Redis channel reads its pending BRPOP first; that read raises a
connection error, so the channel is left open while ``collect()`` detaches its transport
(``transport.client = None``). ``close()`` then closes the channel again, and its
``QoS.restore_unacked_once()`` builds a new Redis pool from the detached transport:
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which is no connection
error, so it escapes ``ignore_errors`` and the worker exits ("Unrecoverable error").
Even when it did not crash, that restore ran against a Redis that was gone: the messages
stayed in kombu's ``unacked`` hash until the visibility timeout (1 h) returned them.

So the consumer here takes the held messages off the dying connection itself, before Celery
closes it (nothing is left for kombu to restore), and hands them back once it is connected
again: each is moved from ``unacked`` back to the queue in one transaction (kombu's own
``restore_by_tag``); one that is no longer there (Redis came back empty) is published again
from memory with its ledger entry. Then the in-flight ledger is swept for messages lost
in the transport (taken off the queue, never recorded as held) within seconds, not after
``TICKS_SWEEP_MIN_AGE``. Applying events is idempotent: nothing here applies anything twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from celery import bootsteps
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests, reserved_requests
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps as json_dumps

from workers.brokers import ledger
from workers.core.settings import QUEUE

log = logging.getLogger(__name__)

RECOVERY_LOCK = "ticks:inflight:recovering"
# After a reconnection the ledger is swept at these delays (seconds), for messages published
# at least RECOVERY_MIN_AGE seconds earlier: long enough for a live worker to have recorded
# what it took off the queue as held, short enough that a broker restart costs seconds.
RECOVERY_SWEEPS = (3.0, 15.0)
RECOVERY_MIN_AGE = 2.0


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which keeps a message whose recording as held may have failed.

    kombu records a message it took off the queue in ``unacked`` (one MULTI) and only then in
    memory as delivered. When Redis stops right after running that MULTI (SIGTERM, SHUTDOWN:
    it saves its data and exits without sending the answer), the MULTI raises a connection
    error: the message is in ``unacked`` but held by nobody, so neither kombu nor the ledger's
    sweeper (which leaves whatever is in ``unacked`` to its holder) returns it before the
    visibility timeout (1 h). Kept in memory anyway, it is taken as held when the connection
    is lost and handed back (restored from ``unacked`` if it is there, published again if not).
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except BaseException:
            if delivery_tag not in self._delivered:
                virtual.QoS.append(self, message, delivery_tag)
            raise


# The worker is the only consumer; kombu's Redis channel builds its QoS from this attribute.
kombu_redis.Channel.QoS = QoS


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, which keeps one client for its commands instead of one each.

    kombu builds a new redis-py client (``_create_client``: a redis.Redis on the channel's
    connection pool, whose construction copies its response callbacks and reads its
    settings) for each command it sends outside the consumer's own client: recording a
    message as held, acknowledging it, publishing the task events Flower follows. A sampling
    profile of the worker's main process under load put that construction at a sixth of its
    time. A redis-py client is safe to share between threads (each command takes a
    connection from the pool), so the channel keeps one, made again when its pool is.
    """

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


kombu_redis.Transport.Channel = Channel


def lost_channels(connection: Any) -> list[Any]:
    """Return the channels of a connection (kombu privates of the virtual transport)."""
    channels: list[Any] = []
    for channel in [connection._default_channel, *getattr(connection.transport, "channels", [])]:
        if channel is not None and all(channel is not seen for seen in channels):
            channels.append(channel)
    return channels


def take_held(channels: list[Any]) -> list[Any]:
    """Return the messages delivered and not acknowledged on these channels, and empty their
    QoS so that closing them restores nothing (kombu privates: the virtual transport's QoS
    keeps them in ``_delivered``, acknowledged ones in ``_dirty``)."""
    held = []
    for channel in channels:
        qos = getattr(channel, "_qos", None)
        if qos is None:
            continue
        qos._flush()  # forget the acknowledged ones
        held.extend(qos._delivered.values())
        qos._delivered.clear()
        qos._delivered.restored = True  # restore_unacked_once() then has nothing to do
    for message in held:
        message.channel = HandedBack()
    return held


class HandedBack:
    """The channel of a message taken off a lost connection.

    A task still running when the connection dropped acknowledges (or rejects) its message
    when it ends, on the channel it came from. That channel is closed and detached from its
    transport: kombu would raise AttributeError there, which Celery does not expect and which
    stops the worker. The message is handed back to the queue by this module instead, so its
    acknowledgement has nothing left to do: the copy handed back is delivered again and
    applied once more, which changes nothing.
    """

    no_ack_consumers = None

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        log.debug("ack of %s dropped: its message was handed back", delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        log.debug("reject of %s dropped: its message was handed back", delivery_tag)


def hand_back(client: Any, channel: Any, held: list[Any]) -> tuple[int, int]:
    """Requeue held messages after a reconnection; return (restored, republished).

    A message still in ``unacked`` goes back to the queue (removed from ``unacked`` in the
    same transaction). One that is not there was lost with Redis' data (a Redis that came
    back empty; nothing else removes it: its acknowledgement was dropped, and Redis restores
    it only after the visibility timeout): it is published again from memory, with its
    ledger entry. At worst that applies it once more, which changes nothing.
    """
    restored = republished = 0
    for message in held:
        tag = message.delivery_tag
        if client.hexists(channel.qos.unacked_key, tag):
            channel.qos.restore_by_tag(tag, client)
            restored += 1
        else:
            republish(client, message)
            republished += 1
    return restored, republished


def republish(client: Any, message: Any) -> None:
    """Push a held message back on the queue as it was delivered, with its ledger entry."""
    raw = dict(message._raw)
    headers = raw.get("headers") or {}
    args, _kwargs, _embed = message.decode()
    # Marked as kombu marks what it restores: the task counts its deliveries from here on.
    headers["redelivered"] = True
    raw.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    ledger.push(
        client,
        headers.get("id", ""),
        headers.get("task", ""),
        args[0] if args else None,
        json_dumps(raw),
    )


class Consumer(CeleryConsumer):
    """Celery's consumer, which keeps what it holds when its broker connection is lost."""

    held: list[Any]

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        channels = lost_channels(connection) if connection is not None else []
        held = take_held(channels)
        super().on_connection_error_after_connected(exc)
        # Closing the channel reads its pending BRPOP first: if Redis answered it meanwhile
        # (a short blip), one more message was delivered on the lost connection.
        held += take_held(channels)
        for request in (*active_requests, *reserved_requests):
            message = getattr(request, "message", None)
            if message is not None and any(message.channel is c for c in channels):
                message.channel = HandedBack()
                if all(message is not m for m in held):
                    held.append(message)
        self.held = [*getattr(self, "held", []), *held]
        if held:
            log.warning(
                "broker connection lost holding %d messages: they go back to the queue "
                "once it is back",
                len(held),
            )


class Recover(bootsteps.StartStopStep):
    """On every (re)connection: hand back what the lost connection held, then sweep soon."""

    requires: ClassVar[tuple[str, ...]] = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timers: list[Any] = []
        self.connected_before = False

    def start(self, c: Any) -> None:
        reconnected, self.connected_before = self.connected_before, True
        if reconnected:
            for delay in RECOVERY_SWEEPS:
                self.timers.append(c.timer.call_after(delay, self.sweep, (c.app,), priority=10))
        held = getattr(c, "held", [])
        if not held:
            return
        try:
            restored, republished = hand_back(
                c.connection.default_channel.client, c.connection.default_channel, held
            )
        except c.connection.connection_errors:
            # Still unreachable: Celery reconnects, and this runs again with them kept.
            log.warning("could not hand back %d held messages yet: reconnecting", len(held))
            raise
        c.held = []
        log.warning(
            "broker connection back: %d held messages requeued, %d published again "
            "(not in Redis any more: it came back empty)",
            restored,
            republished,
        )

    def sweep(self, app: Any) -> None:
        ledger.sweep_or_skip(app, QUEUE, RECOVERY_MIN_AGE, lock_seconds=1, lock_key=RECOVERY_LOCK)

    def stop(self, c: Any) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
