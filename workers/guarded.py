"""What makes a Ticks task safe: database outages waited out, poison and worker-killing
messages dead-lettered, and the broker's own safety nets (the Redis ledger's sweeper, the
RabbitMQ dead-letter consumer). Tasks (workers/tasks.py) only apply."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Any, ClassVar

import psycopg
from celery import Task, bootsteps, signals
from celery.exceptions import Reject
from kombu import Consumer
from psycopg_pool import PoolTimeout

from workers.brokers import broker, ledger
from workers.celery_app import BROKER
from workers.core import store
from workers.core.db import get_pool
from workers.core.settings import (
    QUEUE,
    RETRY_BACKOFF_MAX,
    SWEEP_INTERVAL,
    SWEEP_MIN_AGE,
    VISIBILITY_TIMEOUT,
)
from workers.metrics import metrics

log = logging.getLogger(__name__)

# Connection loss, a database that is down or restarting, deadlocks and serialization
# failures all derive from OperationalError: retrying them later is always safe, because
# applying a batch twice changes nothing.
TRANSIENT_ERRORS = (psycopg.OperationalError, PoolTimeout)
# Transient errors are retried without limit: a database outage must never drop
# acknowledged callbacks.
RETRY_BACKOFF_BASE = 2
# A task holding its message through an outage hands it back after this long, well before
# Redis would redeliver it to another worker, or RabbitMQ's consumer timeout (30 min by
# default) would close the worker's channel.
HOLD_LIMIT = VISIBILITY_TIMEOUT / 2 if BROKER.name == "redis" else min(VISIBILITY_TIMEOUT / 2, 900)
# Any other error is a bug or bad data: retried this many times, then dead-lettered.
POISON_RETRIES = 3
POISON_RETRY_SECONDS = 1
# A message whose worker died while running it is redelivered (acks_late); after this many
# deliveries of the same attempt it is dead-lettered instead of killing workers forever
# (on Redis by the task, which counts; on RabbitMQ by the quorum queue's delivery limit).
MAX_DELIVERIES = broker.MAX_DELIVERIES
SHUTTING_DOWN = threading.Event()


@signals.worker_shutting_down.connect
def note_shutdown(**kwargs: Any) -> None:
    """Wake any task waiting out an outage, so it hands its message back at once."""
    SHUTTING_DOWN.set()


def retry_countdown(retries: int, rng: random.Random | None = None) -> float:
    """Return seconds before retry number ``retries + 1``: exponential, capped, half jittered.

    The fixed half keeps the backoff visible and bounded below; the random half spreads the
    workers that failed together so they do not hit a recovering database all at once.
    """
    ceiling = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2**retries)
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class DeadLettered(Exception):
    """Raised by a task whose message was stored in dead_letters: the task ends as failed
    (Flower's FAILURE and failed count, "raised unexpected" in the worker's log), not as a
    success returning nothing.

    Raised only once the dead letter is committed, so the message is settled as before: with
    acks_late a task that raises is acknowledged (task_acks_on_failure_or_timeout, kept on in
    workers/celery_app.py), never requeued (only a lost worker's message is), and on Redis its
    ledger entry is removed first. Not Reject(requeue=False): RabbitMQ would route a rejected
    message to the dead-letter exchange, and it would be stored a second time.
    """

    @classmethod
    def kept(cls, error: str, letter_id: int) -> DeadLettered:
        """The failure of a task given up on for ``error`` and stored as ``letter_id``."""
        return cls(f"failed: {error}; kept as dead letter {letter_id}")


class GuardedTask(Task):
    """A task that outlasts database outages and dead-letters what keeps failing.

    No retry here goes through Celery's countdown (ETA) machinery: a worker holding many
    ETA messages under a prefetch limit can stop consuming (celery#3778, #2731), and every
    message needs the database anyway. So a task waits out an outage in place, its message
    unacknowledged, and hands it back to the queue (Reject, requeue) on shutdown or after
    holding it for HOLD_LIMIT, so the broker never redelivers it behind a live holder. A
    message that kills its worker every time (acks_late + reject_on_worker_lost would
    redeliver it forever) is dead-lettered after MAX_DELIVERIES: on Redis, which keeps no
    delivery count, by this task with a count kept beside the queue; on RabbitMQ by the
    quorum queue's delivery limit (DeadLetterConsumer stores it).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        deliveries = BROKER.deliveries(self.app, self.request)
        finished = False
        try:
            if deliveries > MAX_DELIVERIES and not BROKER.limits_deliveries:
                error = f"the worker died running it {deliveries - 1} times"
                raise self.dead_letter(args, error, deliveries)
            result = self.run_until_done(args, kwargs, deliveries)
            finished = True
            return result
        except DeadLettered:
            finished = True  # stored in dead_letters: the message is done with, and acked
            raise
        finally:
            BROKER.settle(self.app, self.request.id, finished)

    def run_until_done(self, args: tuple[Any, ...], kwargs: dict[str, Any], deliveries: int) -> Any:
        """Run the task through transient errors; dead-letter after repeated other errors."""
        held_since = time.monotonic()
        outage_attempts = failures = 0
        while True:
            try:
                return super().__call__(*args, **kwargs)
            except TRANSIENT_ERRORS as exc:
                self.wait_out(exc, outage_attempts, held_since)
                metrics().retries.labels("database_unavailable").inc()
                outage_attempts += 1
            except Exception as exc:
                failures += 1
                if failures > POISON_RETRIES:
                    raise self.dead_letter(args, repr(exc), deliveries) from exc
                log.warning(
                    "task %s failed (%r): retry %d of %d",
                    self.request.id,
                    exc,
                    failures,
                    POISON_RETRIES,
                )
                metrics().retries.labels("error").inc()
                time.sleep(POISON_RETRY_SECONDS * failures)

    def wait_out(self, exc: Exception, attempt: int, held_since: float) -> None:
        """Sleep before the next attempt, or hand the message back to the queue."""
        if time.monotonic() - held_since > HOLD_LIMIT:
            log.warning(
                "task %s: database unavailable for %.0fs, requeueing it",
                self.request.id,
                time.monotonic() - held_since,
            )
            raise Reject(exc, requeue=True)
        countdown = retry_countdown(attempt)
        log.warning(
            "database unavailable for task %s (%s): retry %d in %.1fs",
            self.request.id,
            type(exc).__name__,
            attempt + 1,
            countdown,
        )
        if SHUTTING_DOWN.wait(countdown):
            raise Reject(exc, requeue=True)

    def dead_letter(self, args: tuple[Any, ...], error: str, deliveries: int) -> DeadLettered:
        """Store the message in dead_letters, waiting out a database outage first; return the
        exception the task then raises, so that it ends as failed (see DeadLettered)."""
        letter = {
            "task_id": self.request.id,
            "task_name": self.name,
            "payload": args[0],
            "error": error,
            "deliveries": deliveries,
        }
        held_since = time.monotonic()
        for attempt in itertools.count():
            try:
                with get_pool().connection() as conn:
                    letter_id = store.record_dead_letter(conn, letter)
                break
            except TRANSIENT_ERRORS as exc:
                self.wait_out(exc, attempt, held_since)
        metrics().dead_letters.inc()
        log.error("dead-lettered task=%s task_id=%s: %s", self.name, self.request.id, error)
        return DeadLettered.kept(error, letter_id)


class LedgerSweeper(bootsteps.StartStopStep):
    """Every worker sweeps the in-flight ledger on a timer (one at a time, by a lock)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def start(self, worker: Any) -> None:
        self.timer_ref = worker.timer.call_repeatedly(
            SWEEP_INTERVAL, self.sweep_once, (worker.app,), priority=10
        )

    def stop(self, worker: Any) -> None:
        ref = getattr(self, "timer_ref", None)
        if ref is not None:
            ref.cancel()

    def sweep_once(self, celery: Any) -> None:
        ledger.sweep_or_skip(celery, QUEUE, SWEEP_MIN_AGE, lock_seconds=max(1, int(SWEEP_INTERVAL)))


class DeadLetterConsumer(bootsteps.ConsumerStep):
    """RabbitMQ: store what the quorum queue dead-lettered (past its delivery limit) in the
    dead_letters table, where the CLI, the endpoints and the status page find it."""

    def start(self, c: Any) -> None:
        self.consumer = c  # its event dispatcher tells Flower of each letter (announce)
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [
            Consumer(
                channel,
                queues=[broker.dead_letter_queue()],
                callbacks=[self.on_message],
                accept=["json"],
                prefetch_count=1,
            )
        ]

    def on_message(self, body: Any, message: Any) -> None:
        letter = broker.dead_letter_record(body, message.headers or {})
        try:
            with get_pool().connection() as conn:
                letter_id = store.record_dead_letter(conn, letter)
        except TRANSIENT_ERRORS as exc:
            # Kept on the dead-letter queue: tried again when it comes back (the database
            # is down; nothing else can be done meanwhile anyway).
            log.warning("dead letter %s not stored yet: %s", letter["task_id"], exc)
            time.sleep(1)
            message.requeue()
            return
        message.ack()
        metrics().dead_letters.inc()
        log.error(
            "dead-lettered task=%s task_id=%s: %s",
            letter["task_name"],
            letter["task_id"],
            letter["error"],
        )
        self.announce(letter, letter_id)

    def announce(self, letter: dict[str, Any], letter_id: int) -> None:
        """Send the task's task-failed event: no worker ran it to its end, so no other event
        says so, and Flower would show it rejected (or started) for ever, its failed count 0."""
        dispatcher = getattr(getattr(self, "consumer", None), "event_dispatcher", None)
        if dispatcher is None or not dispatcher.enabled:
            return
        failure = repr(DeadLettered.kept(letter["error"], letter_id))
        try:
            dispatcher.send("task-failed", uuid=letter["task_id"], exception=failure, traceback="")
        except broker.ERRORS as exc:  # the letter is stored: only the event is missed
            log.warning("task-failed event of %s not sent: %s", letter["task_id"], exc)
