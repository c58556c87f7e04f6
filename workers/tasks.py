"""Celery tasks: thin, idempotent wrappers around workers.store."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
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
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": None,  # a database outage must not drop acknowledged callbacks
}


@worker_process_init.connect
def open_pool(**kwargs: Any) -> None:
    """Open the pool in each worker process, after the fork."""
    get_pool()


@worker_process_shutdown.connect
def shut_pool(**kwargs: Any) -> None:
    """Close the pool when a worker process exits."""
    close_pool()


@app.task(name=APPLY_EVENTS, **RETRY_OPTIONS)
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


@app.task(name=QUARANTINE, **RETRY_OPTIONS)
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
