"""Publish to the broker, and tell the caller at once when it cannot."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from flask import Flask, current_app

from app.metrics import BATCH_CALLBACKS, ENQUEUE_SECONDS
from workers import ledger
from workers.celery_app import APPLY_EVENTS, make_celery

log = logging.getLogger(__name__)

EXTENSION = "ticks.celery"
# A dead or unreachable broker must be answered 503 within 2 s, so every wait is short:
# connect and socket timeouts of 0.5 s (redis-py itself retries a dropped connection once
# it is back; a MULTI repeated that way at worst queues a message twice, applied once).
PUBLISH_SOCKET_TIMEOUT = 0.5
BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.RedisError,
    OSError,
    socket.timeout,
)


# A request waits at most this long to start publishing (a dead broker: 503 within 2 s).
PUBLISH_DEADLINE = 1.5
MAX_BATCH_EVENTS = 500
BATCHER = "ticks.batcher"


class QueueUnavailable(Exception):
    """The broker could not take the message; nothing was enqueued."""


@dataclass(eq=False)
class Pending:
    """One request's events, waiting to be published."""

    events: list[dict[str, Any]]
    settled: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class GroupPublisher:
    """Group commit: the events of concurrent requests go to the broker as one task message.

    Each request queues its events, then takes the publish lock; whoever holds it publishes
    everything waiting (up to ``max_events`` events) as one message and marks each of those
    requests published or failed. A request whose events another holder took only waits for
    that holder's answer. Alone (gunicorn's sync worker, or a quiet moment) a request publishes
    its own events, with no wait and no extra thread. Under a burst, one broker message and one
    ledger entry carry many callbacks: the endpoint spends less per callback, and the workers
    consume fewer messages and apply more events per transaction. No request is answered before
    the message holding its events is on the broker.
    """

    def __init__(self, publish: Any, max_events: int = MAX_BATCH_EVENTS) -> None:
        self.publish = publish  # publish(events, callbacks); raises QueueUnavailable
        self.max_events = max_events
        self.waiting: deque[Pending] = deque()
        self.waiting_lock = threading.Lock()
        self.publish_lock = threading.Lock()

    def submit(self, events: list[dict[str, Any]], deadline: float = PUBLISH_DEADLINE) -> None:
        """Return once the events are on the broker; raise QueueUnavailable otherwise."""
        with ENQUEUE_SECONDS.time():
            self.wait_for_publish(events, deadline)

    def wait_for_publish(self, events: list[dict[str, Any]], deadline: float) -> None:
        """Queue the events and see them published, by this thread or another."""
        pending = Pending(events)
        give_up_at = time.monotonic() + deadline
        with self.waiting_lock:
            self.waiting.append(pending)
        while not pending.settled.is_set():
            if self.publish_lock.acquire(timeout=max(give_up_at - time.monotonic(), 0)):
                try:
                    if not pending.settled.is_set():
                        self.publish_waiting()
                finally:
                    self.publish_lock.release()
                continue
            with self.waiting_lock:
                if pending in self.waiting:  # nobody took it: it is not on the broker
                    self.waiting.remove(pending)
                    raise QueueUnavailable("timed out waiting for the broker")
            # The holder took it; its publish is bounded by the broker timeouts.
            pending.settled.wait()
        if pending.error is not None:
            raise QueueUnavailable(pending.error)

    def publish_waiting(self) -> None:
        """Publish the oldest waiting requests' events as one message (publish lock held)."""
        batch: list[Pending] = []
        count = 0
        with self.waiting_lock:
            while self.waiting and (
                not batch or count + len(self.waiting[0].events) <= self.max_events
            ):
                batch.append(self.waiting.popleft())
                count += len(batch[-1].events)
        BATCH_CALLBACKS.observe(len(batch))
        try:
            self.publish([event for item in batch for event in item.events], len(batch))
        except Exception as exc:  # whatever it was, these events are not known to be enqueued
            if not isinstance(exc, QueueUnavailable):
                log.exception("publishing %d callbacks failed", len(batch))
            for item in batch:
                item.error = str(exc) or type(exc).__name__
        finally:
            for item in batch:
                item.settled.set()


def init_queue(app: Flask) -> Celery:
    """Attach a publishing Celery app for the configured broker."""
    celery = make_celery(
        app.config["REDIS_URL"],
        socket_connect_timeout=PUBLISH_SOCKET_TIMEOUT,
        socket_timeout=PUBLISH_SOCKET_TIMEOUT,
        # kombu's connection failover options: used when a channel (re)connects.
        max_retries=1,
        interval_start=0,
        interval_step=0.2,
        interval_max=0.2,
    )
    celery.conf.broker_connection_timeout = PUBLISH_SOCKET_TIMEOUT
    app.extensions[EXTENSION] = celery
    app.extensions[BATCHER] = GroupPublisher(
        lambda events, callbacks: publish_events(celery, events, callbacks)
    )
    return celery


def enqueue_events(events: list[dict[str, Any]]) -> None:
    """Publish one callback's events, grouped with those of concurrent requests."""
    current_app.extensions[BATCHER].submit(events)


def publish_events(celery: Celery, events: list[dict[str, Any]], callbacks: int) -> None:
    """Publish events of one or more callbacks as one apply_events task message."""
    send(
        celery,
        APPLY_EVENTS,
        events,
        task_id=uuid.uuid4().hex,
        summary=f"[{len(events)} events from {callbacks} callbacks]",
    )


def enqueue(task_name: str, payload: Any, *, task_id: str, summary: str) -> None:
    """Publish one task message; raise QueueUnavailable if the broker did not take it."""
    send(current_app.extensions[EXTENSION], task_name, payload, task_id=task_id, summary=summary)


def send(celery: Celery, task_name: str, payload: Any, *, task_id: str, summary: str) -> None:
    """Publish a task message with its ledger entry; raise QueueUnavailable if the broker
    did not take it."""
    try:
        ledger.publish(
            celery,
            task_name,
            payload,
            task_id=task_id,
            summary=summary,
            timeout=PUBLISH_SOCKET_TIMEOUT,
        )
    except BROKER_ERRORS as exc:
        log.error("broker unavailable task=%s task_id=%s: %s", task_name, task_id, exc)
        raise QueueUnavailable(str(exc)) from exc


def ping_broker() -> None:
    """Raise if the broker does not answer a PING."""
    celery: Celery = current_app.extensions[EXTENSION]
    with celery.connection_for_write() as conn:
        conn.default_channel.client.ping()
