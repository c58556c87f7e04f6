"""Celery tasks: thin, idempotent wrappers around workers.store."""

from __future__ import annotations

import logging
import random
from typing import Any

import psycopg
import redis.exceptions
from celery import Task
from celery.exceptions import Retry
from celery.signals import worker_process_init, worker_process_shutdown
from psycopg_pool import PoolTimeout

from schemas.events import load_events
from workers import store
from workers.celery_app import APPLY_EVENTS, QUARANTINE, RETRY_BACKOFF_MAX, app
from workers.db import close_pool, get_pool
from workers.redact import mask_phone

log = logging.getLogger(__name__)

# Connection loss, a database that is down or restarting, deadlocks and serialization
# failures all derive from OperationalError: retrying them later is always safe, because
# applying a batch twice changes nothing.
TRANSIENT_ERRORS = (psycopg.OperationalError, PoolTimeout)
# Transient errors retry forever (max_retries=None on the tasks): a database outage must
# never drop acknowledged callbacks.
RETRY_BACKOFF_BASE = 2
# Any other error is a bug or bad data: retried this many times, then dead-lettered.
POISON_RETRIES = 3
# A message whose worker died while running it is redelivered (acks_late); after this many
# deliveries of the same attempt it is dead-lettered instead of killing workers forever.
MAX_DELIVERIES = 3
DELIVERY_KEY_TTL = 7 * 24 * 3600


@worker_process_init.connect
def open_pool(**kwargs: Any) -> None:
    """Open the pool in each worker process, after the fork."""
    get_pool()


@worker_process_shutdown.connect
def shut_pool(**kwargs: Any) -> None:
    """Close the pool when a worker process exits."""
    close_pool()


def retry_countdown(retries: int, rng: random.Random | None = None) -> float:
    """Return seconds before retry number ``retries + 1``: exponential, capped, half jittered.

    The fixed half keeps the backoff visible and bounded below; the random half spreads the
    tasks that failed together so they do not hit a recovering database all at once.
    """
    ceiling = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2**retries)
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class GuardedTask(Task):
    """A task that dead-letters what keeps failing instead of retrying it forever.

    Redis keeps no delivery count, so one is kept beside the queue, per task id and retry:
    a message that kills its worker every time (acks_late + reject_on_worker_lost would
    redeliver it forever) is stopped after MAX_DELIVERIES.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = f"ticks:deliveries:{self.request.id}:{self.request.retries}"
        deliveries = self.count_delivery(key)
        try:
            if deliveries > MAX_DELIVERIES:
                error = f"the worker died running it {deliveries - 1} times"
                return self.dead_letter(args, error, deliveries)
            try:
                return super().__call__(*args, **kwargs)
            except Retry:
                raise
            except TRANSIENT_ERRORS as exc:
                countdown = retry_countdown(self.request.retries)
                log.warning(
                    "database unavailable for task %s (%s): retry %d in %.1fs",
                    self.request.id,
                    type(exc).__name__,
                    self.request.retries + 1,
                    countdown,
                )
                raise self.retry(exc=exc, countdown=countdown) from exc
            except Exception as exc:
                if self.request.retries < POISON_RETRIES:
                    log.warning(
                        "task %s failed (%r): retry %d of %d",
                        self.request.id,
                        exc,
                        self.request.retries + 1,
                        POISON_RETRIES,
                    )
                    raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
                return self.dead_letter(args, repr(exc), deliveries)
        finally:
            self.forget_delivery(key)

    def count_delivery(self, key: str) -> int:
        """Count one more delivery of this attempt; 1 if the broker cannot say."""
        try:
            with self.app.pool.acquire(block=True, timeout=5) as conn:
                pipe = conn.default_channel.client.pipeline()
                count, _ = pipe.incr(key).expire(key, DELIVERY_KEY_TTL).execute()
                return int(count)
        except (OSError, redis.exceptions.RedisError) as exc:
            log.warning("delivery count unavailable for %s: %s", self.request.id, exc)
            return 1

    def forget_delivery(self, key: str) -> None:
        """Drop the count once the attempt ended (done, retried or dead-lettered)."""
        try:
            with self.app.pool.acquire(block=True, timeout=5) as conn:
                conn.default_channel.client.delete(key)
        except (OSError, redis.exceptions.RedisError):
            pass  # the key expires by itself

    def dead_letter(self, args: tuple[Any, ...], error: str, deliveries: int) -> None:
        """Store the message in dead_letters; retry later if the database is unreachable."""
        letter = {
            "task_id": self.request.id,
            "task_name": self.name,
            "payload": args[0],
            "error": error,
            "deliveries": deliveries,
        }
        try:
            with get_pool().connection() as conn:
                store.record_dead_letter(conn, letter)
        except TRANSIENT_ERRORS as exc:
            raise self.retry(
                exc=exc, countdown=min(2**self.request.retries, RETRY_BACKOFF_MAX)
            ) from exc
        log.error("dead-lettered task=%s task_id=%s: %s", self.name, self.request.id, error)


@app.task(name=APPLY_EVENTS, base=GuardedTask, max_retries=None)
def apply_events(payload: list[dict[str, Any]]) -> dict[str, int]:
    """Apply one callback's events in one transaction."""
    events = load_events(payload)
    with get_pool().connection() as conn:
        outcomes = store.apply_events(conn, events)
    for event in events:
        log.info(
            "event provider=%s message_id=%s status=%s phone=%s request_id=%s",
            event.provider,
            event.message_id,
            event.status,
            mask_phone(event.phone),
            event.request_id,
        )
    return {outcome.value: count for outcome, count in outcomes.items()}


@app.task(name=QUARANTINE, base=GuardedTask, max_retries=None)
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
