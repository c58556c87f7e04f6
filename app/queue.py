"""Publish to the broker, and tell the caller at once when it cannot."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from flask import Flask, current_app

from app.config import CELERY_EXTENSION
from app.metrics import web_metrics
from workers.brokers import broker
from workers.celery_app import APPLY_EVENTS, make_celery
from workers.core.redact import mask_message_id

log = logging.getLogger(__name__)
# How many request and message ids a group's log line names (a group holds up to 500 events).
LOGGED_IDS = 100

EXTENSION = CELERY_EXTENSION
# A dead, unreachable, blocked or silent broker must be answered 503 within 2 s, so every
# wait is short: connect and socket timeouts of 0.5 s, and on RabbitMQ a confirm within 0.5 s
# (redis-py itself retries a dropped connection once it is back; a MULTI repeated that way at
# worst queues a message twice, applied once).
PUBLISH_SOCKET_TIMEOUT = 0.5
BROKER_ERRORS = broker.ERRORS


# A request waits at most this long to start publishing (a dead broker: 503 within 2 s).
PUBLISH_DEADLINE = 1.5
MAX_BATCH_EVENTS = 500
BATCHER = "ticks.batcher"
# While callbacks arrive densely in this process, the publisher holds a group open this long
# for more before publishing it...
DEFAULT_LINGER_SECONDS = 0.02
# ... that is, while at least this many callbacks arrive per linger window.
DENSE_GROUP = 4
# A group is also closed when no callback has arrived for this many mean intervals (at least
# MIN_QUIET_SECONDS): callers that wait for their answer before sending the next (a closed
# loop, such as Green-API's one-at-a-time delivery per instance) send nothing more meanwhile.
QUIET_INTERVALS = 3
MIN_QUIET_SECONDS = 0.001
# The smoothing of the mean interval between arrivals (exponential moving average).
ARRIVAL_SMOOTHING = 0.2


def moving_average(mean: float, value: float) -> float:
    """The mean after one more value (the first value when there was none: ``mean`` inf)."""
    if math.isinf(mean):
        return value
    return ARRIVAL_SMOOTHING * value + (1 - ARRIVAL_SMOOTHING) * mean


# Callers that wait for their answer before sending the next (a closed loop) send right after
# a group is published: an arrival within ECHO_WINDOW of the last publish is an answer's echo.
# Callers that do not wait (most providers) arrive at any time, so about ECHO_WINDOW / (time
# between publishes) of their arrivals fall there by chance. While echoes are at least
# ECHO_SHARE of recent arrivals and well above that chance, the arrivals are driven by the
# answers and holding a group open would only slow those callers down (each round trip would
# pay the window: one caller went from 6 to 14 ms a callback), so nothing is held. When
# publishes come too often to tell, arrivals are taken as not driven by the answers: a busy
# web never stops grouping on a guess. So a fast closed-loop caller is held now and then
# (about one callback in three, for a few mean intervals): 11 ms a callback over HTTP where
# holding each would cost it 14 ms, and 2 ms without any window.
ECHO_WINDOW = 0.005
ECHO_SHARE = 0.5


class QueueUnavailable(Exception):
    """The broker could not take the message; nothing was enqueued."""


@dataclass(eq=False)
class Pending:
    """One request's events, waiting to be published."""

    events: list[dict[str, Any]]
    arrived: float = field(default_factory=time.monotonic)
    settled: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


# Every publisher of this process, so a forked child resets each (weakly held: apps come
# and go in tests).
PUBLISHERS: weakref.WeakSet[GroupPublisher] = weakref.WeakSet()
# A request whose events were taken into a publish waits at most this long for its outcome
# (the broker timeouts bound a publish well below it); past it, it is refused.
SETTLE_LIMIT = 10.0


class GroupPublisher:
    """Group commit: the events of many requests go to the broker as one task message.

    Each request queues its events and waits; a publisher thread (one per process, started
    on the first request) publishes everything waiting (up to ``max_events`` events) as one
    message and marks each of those requests published or failed. No request is answered
    before the message holding its events is on the broker; one not taken within its
    deadline is withdrawn and refused, so it is never enqueued behind its 503.

    While callbacks arrive densely (at least DENSE_GROUP per ``linger`` in this process)
    the publisher keeps a group open until its oldest request has waited ``linger``, the
    group is full, or arrivals pause for a few mean intervals: at a steady rate a message
    then carries many callbacks, where it would otherwise carry one and the workers would pay
    their whole per-message cost for each.
    Callers that wait for each answer before sending the next are seldom held (ECHO_WINDOW).
    When arrivals are sparse, a request's events are published as soon as they arrive.
    """

    def __init__(
        self,
        publish: Any,
        max_events: int = MAX_BATCH_EVENTS,
        linger: float = DEFAULT_LINGER_SECONDS,
    ) -> None:
        self.publish = publish  # publish(events, callbacks); raises QueueUnavailable
        self.max_events = max_events
        self.linger = linger
        self.reset()
        PUBLISHERS.add(self)

    def reset(self) -> None:
        """Start empty, without a publisher thread (at creation, and in a forked child)."""
        self.waiting: deque[Pending] = deque()
        self.waiting_events = 0
        self.lock = threading.Lock()
        self.arrival = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None
        self.last_arrival = 0.0
        self.mean_interval = math.inf
        self.last_publish = -math.inf
        self.publish_gap = math.inf  # mean time between publishes (moving average)
        self.echoes = 0.0  # the share of recent arrivals that came just after a publish
        self.answer_driven = False  # arrivals follow the answers: a closed loop

    def submit(self, events: list[dict[str, Any]], deadline: float = PUBLISH_DEADLINE) -> None:
        """Return once the events are on the broker; raise QueueUnavailable otherwise."""
        with web_metrics().enqueue_seconds.time():
            self.wait_for_publish(events, deadline)

    def dense(self) -> bool:
        """True while at least DENSE_GROUP callbacks arrive per linger window, from callers
        that do not wait for their answers: holding a group open is then worth its wait;
        otherwise it would add latency and group little."""
        return self.mean_interval * DENSE_GROUP < self.linger and not self.answer_driven

    def wait_for_publish(self, events: list[dict[str, Any]], deadline: float) -> None:
        """Queue the events and wait until the publisher has published them."""
        pending = Pending(events)
        with self.lock:
            if self.last_arrival:
                interval = pending.arrived - self.last_arrival
                self.mean_interval = moving_average(self.mean_interval, interval)
            self.last_arrival = pending.arrived
            # Stamped before the lock: a publish may have finished since (a negative gap).
            echo = 1.0 if 0 <= pending.arrived - self.last_publish < ECHO_WINDOW else 0.0
            self.echoes = moving_average(self.echoes, echo)
            by_chance = ECHO_WINDOW / max(self.publish_gap, 1e-9)
            self.answer_driven = by_chance < ECHO_SHARE and self.echoes >= max(
                ECHO_SHARE, 2 * by_chance
            )
            self.waiting.append(pending)
            self.waiting_events += len(events)
            # The publisher sleeps while nothing waits, and lingers over a group until it is
            # full: only those two changes need to wake it.
            if len(self.waiting) == 1 or self.waiting_events >= self.max_events:
                self.arrival.notify()
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self.run, name="ticks-group-publisher", daemon=True
                )
                self.thread.start()
        if not pending.settled.wait(deadline):
            with self.lock:
                if pending in self.waiting:  # nobody took it: it is not on the broker
                    self.waiting.remove(pending)
                    self.waiting_events -= len(pending.events)
                    raise QueueUnavailable("timed out waiting for the broker")
            # Taken: its publish is bounded by the broker timeouts. Refused past the limit
            # all the same: a publish that lands later is a duplicate, applied once.
            if not pending.settled.wait(SETTLE_LIMIT):
                raise QueueUnavailable("the publish did not finish in time")
        if pending.error is not None:
            raise QueueUnavailable(pending.error)

    def run(self) -> None:
        """The publisher thread: publish group after group, for the life of the process."""
        while True:
            try:
                self.publish_group(self.take_group())
            except Exception:  # never let the only publisher die: requests would hang
                log.exception("group publisher: unexpected error")

    def take_group(self) -> list[Pending]:
        """Wait for requests; take the oldest, up to max_events events, lingering while dense."""
        batch: list[Pending] = []
        count = 0
        with self.lock:
            while not self.waiting:
                self.arrival.wait()
            if self.dense():
                # Until the linger is over, the group is full, or arrivals pause (a few
                # callers that each wait for their answer: no more are coming).
                close_at = self.waiting[0].arrived + self.linger
                while self.waiting_events < self.max_events:
                    pause = max(QUIET_INTERVALS * self.mean_interval, MIN_QUIET_SECONDS)
                    wake_at = min(close_at, self.last_arrival + pause)
                    remaining = wake_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self.arrival.wait(remaining)
            while self.waiting and (
                not batch or count + len(self.waiting[0].events) <= self.max_events
            ):
                batch.append(self.waiting.popleft())
                count += len(batch[-1].events)
            self.waiting_events -= count
        return batch

    def publish_group(self, batch: list[Pending]) -> None:
        """Publish requests' events as one message; settle each request, whatever happens."""
        if not batch:  # every request of the group withdrew meanwhile
            return
        try:
            web_metrics().batch_callbacks.observe(len(batch))
            self.publish([event for item in batch for event in item.events], len(batch))
        except Exception as exc:  # whatever it was, these events are not known to be enqueued
            if not isinstance(exc, QueueUnavailable):
                log.exception("publishing %d callbacks failed", len(batch))
            for item in batch:
                item.error = str(exc) or type(exc).__name__
        finally:
            with self.lock:
                now = time.monotonic()
                self.publish_gap = moving_average(self.publish_gap, now - self.last_publish)
                self.last_publish = now
            for item in batch:
                item.settled.set()


def reset_publishers_after_fork() -> None:
    for publisher in list(PUBLISHERS):
        publisher.reset()


os.register_at_fork(after_in_child=reset_publishers_after_fork)


def init_queue(app: Flask) -> Celery:
    """Attach a publishing Celery app for the configured broker."""
    celery = make_celery(
        app.config["BROKER_URL"],
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
        lambda events, callbacks: publish_events(celery, events, callbacks),
        linger=app.config["GROUP_LINGER_SECONDS"],
    )
    return celery


def enqueue_events(events: list[dict[str, Any]]) -> None:
    """Publish one callback's events, grouped with those of concurrent requests."""
    current_app.extensions[BATCHER].submit(events)


def publish_events(celery: Celery, events: list[dict[str, Any]], callbacks: int) -> None:
    """Publish events of one or more callbacks as one apply_events task message, and log
    the callbacks it carries (the web's INFO line for accepted callbacks: one per message)."""
    task_id = uuid.uuid4().hex
    send(
        celery,
        APPLY_EVENTS,
        events,
        task_id=task_id,
        summary=f"[{len(events)} events from {callbacks} callbacks]",
    )
    request_ids = list(dict.fromkeys(e["request_id"] for e in events if e.get("request_id")))
    message_ids = [mask_message_id(e["message_id"]) for e in events[:LOGGED_IDS]]
    providers = sorted({e["provider"] for e in events})
    log.info(
        "accepted callbacks=%d events=%d task_id=%s providers=%s request_ids=%s message_ids=%s",
        callbacks,
        len(events),
        task_id,
        ",".join(providers),
        ",".join(request_ids[:LOGGED_IDS]),
        ",".join(message_ids),
        extra={
            "outcome": "accepted",
            "callbacks": callbacks,
            "events": len(events),
            "task_id": task_id,
            "providers": providers,
            "request_ids": request_ids[:LOGGED_IDS],
            "message_ids": message_ids,
        },
    )


def enqueue(task_name: str, payload: Any, *, task_id: str, summary: str) -> None:
    """Publish one task message; raise QueueUnavailable if the broker did not take it."""
    send(current_app.extensions[EXTENSION], task_name, payload, task_id=task_id, summary=summary)


def send(celery: Celery, task_name: str, payload: Any, *, task_id: str, summary: str) -> None:
    """Publish a task message durably (workers/brokers/broker.py); raise QueueUnavailable if the
    broker did not take it."""
    try:
        broker.for_url(celery.conf.broker_url).publish(
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
    """Raise if the broker does not answer."""
    celery: Celery = current_app.extensions[EXTENSION]
    broker.for_url(celery.conf.broker_url).ping(celery)


def queue_snapshot() -> broker.QueueSnapshot | None:
    """The queue as the broker sees it now, or None when it does not answer."""
    celery: Celery = current_app.extensions[EXTENSION]
    return broker.for_url(celery.conf.broker_url).snapshot(celery, PUBLISH_SOCKET_TIMEOUT)
