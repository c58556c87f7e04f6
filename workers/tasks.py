"""Celery tasks: thin, idempotent wrappers around workers.store."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter
from typing import Any, ClassVar

import psycopg
import redis.exceptions
from celery import Task, bootsteps
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutting_down
from psycopg_pool import PoolTimeout

from schemas.events import StatusEvent, load_events
from workers import ledger, recovery, store
from workers.celery_app import (
    APPLY_EVENTS,
    QUARANTINE,
    QUEUE,
    RETRY_BACKOFF_MAX,
    SWEEP_INTERVAL,
    SWEEP_MIN_AGE,
    VISIBILITY_TIMEOUT,
    app,
)
from workers.db import close_pool, get_pool
from workers.metrics import metrics
from workers.redact import mask_phone
from workers.store import Outcome

log = logging.getLogger(__name__)

# Connection loss, a database that is down or restarting, deadlocks and serialization
# failures all derive from OperationalError: retrying them later is always safe, because
# applying a batch twice changes nothing.
TRANSIENT_ERRORS = (psycopg.OperationalError, PoolTimeout)
# Transient errors are retried without limit: a database outage must never drop
# acknowledged callbacks.
RETRY_BACKOFF_BASE = 2
# A task holding its message through an outage hands it back after this long, well before
# Redis would redeliver it to another worker.
HOLD_LIMIT = VISIBILITY_TIMEOUT / 2
# Any other error is a bug or bad data: retried this many times, then dead-lettered.
POISON_RETRIES = 3
POISON_RETRY_SECONDS = 1
# A message whose worker died while running it is redelivered (acks_late); after this many
# deliveries of the same attempt it is dead-lettered instead of killing workers forever.
MAX_DELIVERIES = 3
DELIVERY_KEY_TTL = 7 * 24 * 3600
SHUTTING_DOWN = threading.Event()


@worker_process_init.connect
def open_pool(**kwargs: Any) -> None:
    """Open the pool in each worker process, after the fork; create its metrics too, so the
    first task does not pay for them."""
    get_pool()
    metrics()


@worker_process_shutdown.connect
def shut_pool(**kwargs: Any) -> None:
    """Close the pool when a worker process exits."""
    close_pool()


def retry_countdown(retries: int, rng: random.Random | None = None) -> float:
    """Return seconds before retry number ``retries + 1``: exponential, capped, half jittered.

    The fixed half keeps the backoff visible and bounded below; the random half spreads the
    workers that failed together so they do not hit a recovering database all at once.
    """
    ceiling = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2**retries)
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@worker_shutting_down.connect
def note_shutdown(**kwargs: Any) -> None:
    """Wake any task waiting out an outage, so it hands its message back at once."""
    SHUTTING_DOWN.set()


class GuardedTask(Task):
    """A task that outlasts database outages and dead-letters what keeps failing.

    No retry here goes through Celery's countdown (ETA) machinery: a worker holding many
    ETA messages under a prefetch limit can stop consuming (celery#3778, #2731), and every
    message needs the database anyway. So a task waits out an outage in place, its message
    unacknowledged, and hands it back to the queue (Reject, requeue) on shutdown or after
    holding it for half the visibility timeout, so Redis never redelivers it behind a live
    holder. Redis keeps no delivery count, so one is kept beside the queue: a message that
    kills its worker every time (acks_late + reject_on_worker_lost would redeliver it
    forever) is dead-lettered after MAX_DELIVERIES.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = f"ticks:deliveries:{self.request.id}"
        deliveries = self.deliveries(key)
        finished = False
        try:
            if deliveries > MAX_DELIVERIES:
                error = f"the worker died running it {deliveries - 1} times"
                result = self.dead_letter(args, error, deliveries)
            else:
                result = self.run_until_done(args, kwargs, deliveries)
            finished = True
            return result
        finally:
            self.forget_delivery(key, finished)

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
                    return self.dead_letter(args, repr(exc), deliveries)
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

    def deliveries(self, key: str) -> int:
        """Return which delivery of its message this run is.

        A first delivery is known without asking Redis: kombu marks every message it puts
        back on the queue (a dead worker's, a rejected one) ``redelivered``. Only those are
        counted, so the common case costs no round trip: count + 1 is the delivery.
        """
        if not (self.request.delivery_info or {}).get("redelivered"):
            return 1
        return self.count_delivery(key) + 1

    def count_delivery(self, key: str) -> int:
        """Count one more delivery of this message; 1 if the broker cannot say."""
        try:
            with self.app.pool.acquire(block=True, timeout=5) as conn:
                pipe = conn.default_channel.client.pipeline()
                count, _ = pipe.incr(key).expire(key, DELIVERY_KEY_TTL).execute()
                return int(count)
        except (OSError, redis.exceptions.RedisError) as exc:
            log.warning("delivery count unavailable for %s: %s", self.request.id, exc)
            return 1

    def forget_delivery(self, key: str, finished: bool) -> None:
        """Drop the delivery count; once finished, the message's in-flight ledger entry too."""
        try:
            with self.app.pool.acquire(block=True, timeout=5) as conn:
                pipe = conn.default_channel.client.pipeline().delete(key)
                if finished:
                    ledger.finish(pipe, self.request.id)
                pipe.execute()
        except (OSError, redis.exceptions.RedisError):
            # The count expires by itself; a ledger entry left behind makes the sweeper
            # publish the message again, which applies nothing twice.
            log.warning("could not clear delivery records of %s", self.request.id)

    def dead_letter(self, args: tuple[Any, ...], error: str, deliveries: int) -> bool:
        """Store the message in dead_letters, waiting out a database outage first."""
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
                    store.record_dead_letter(conn, letter)
                break
            except TRANSIENT_ERRORS as exc:
                self.wait_out(exc, attempt, held_since)
        metrics().dead_letters.inc()
        log.error("dead-lettered task=%s task_id=%s: %s", self.name, self.request.id, error)
        return False


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


app.steps["worker"].add(LedgerSweeper)
app.steps["consumer"].add(recovery.Recover)


def count_applied(
    events: list[StatusEvent],
    outcomes: Counter[Outcome],
    refused: Counter[tuple[str | None, str]],
    seconds: float,
) -> None:
    """Record one applied batch in the worker's metrics."""
    measures = metrics()
    for outcome, count in outcomes.items():
        measures.events.labels(outcome.value).inc(count)
    for (current, incoming), count in refused.items():
        measures.refused.labels(current or "none", incoming).inc(count)
    for event in events:
        if event.status == "failed":
            measures.failed.labels(event.provider).inc()
    measures.batch_events.observe(len(events))
    measures.apply_seconds.observe(seconds)


@app.task(name=APPLY_EVENTS, base=GuardedTask)
def apply_events(payload: list[dict[str, Any]]) -> dict[str, int]:
    """Apply the events of one or more callbacks in one transaction."""
    events = load_events(payload)
    refused: Counter[tuple[str | None, str]] = Counter()
    started = time.perf_counter()
    with get_pool().connection() as conn:
        outcomes = store.apply_events(conn, events, refused)
    counts = {outcome.value: count for outcome, count in outcomes.items()}
    count_applied(events, outcomes, refused, time.perf_counter() - started)
    message_ids = sorted({e.message_id for e in events})
    request_ids = sorted({e.request_id for e in events if e.request_id})
    log.info(
        "applied task_id=%s events=%d %s message_ids=%s request_ids=%s",
        apply_events.request.id,
        len(events),
        " ".join(f"{name}={count}" for name, count in sorted(counts.items())),
        ",".join(message_ids[:20]),
        ",".join(request_ids[:20]),
        extra={
            "events": len(events),
            "outcomes": counts,
            "message_ids": message_ids[:100],
            "request_ids": request_ids[:100],
        },
    )
    if log.isEnabledFor(logging.DEBUG):
        for event in events:
            log.debug(
                "event provider=%s message_id=%s status=%s phone=%s request_id=%s",
                event.provider,
                event.message_id,
                event.status,
                mask_phone(event.phone),
                event.request_id,
            )
    return counts


@app.task(name=QUARANTINE, base=GuardedTask)
def quarantine_callback(record: dict[str, Any]) -> bool:
    """Store an invalid callback's raw body and errors for inspection and replay."""
    with get_pool().connection() as conn:
        stored = store.record_quarantine(conn, record)
    log.warning(
        "quarantined provider=%s request_id=%s reason=%s",
        record["provider"],
        record["request_id"],
        record["reason"],
    )
    return stored
