"""Celery tasks: thin, idempotent wrappers around workers.core.store (what keeps them safe is in
workers/guarded.py)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import psycopg

from schemas.events import StatusEvent, load_connections, load_events
from workers.brokers import recovery
from workers.celery_app import APPLY_EVENTS, BROKER, ERASE, QUARANTINE, RECORD_CONNECTIONS, app
from workers.core import store
from workers.core.db import get_pool
from workers.core.redact import mask_message_id, mask_numbers, mask_phone
from workers.core.store import Outcome
from workers.guarded import DeadLetterConsumer, GuardedTask, LedgerSweeper
from workers.health import Liveness
from workers.lifecycle import erasure
from workers.lifecycle.housekeeping import Housekeeping
from workers.lifecycle.watch import Watch
from workers.metrics import metrics

log = logging.getLogger(__name__)

app.steps["consumer"].add(Liveness)
app.steps["worker"].add(Housekeeping)
app.steps["worker"].add(Watch)
if BROKER.name == "redis":
    app.steps["worker"].add(LedgerSweeper)
    app.steps["consumer"].add(recovery.Recover)
else:
    app.steps["consumer"].add(DeadLetterConsumer)


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


# When this process last noted each instance's traffic (GET /instances' last_status_at): at
# most once a minute each, so the write costs nothing measurable per batch.
TOUCH_EVERY = 60.0
TOUCHED: dict[tuple[str, str], float] = {}


def due_touches(events: list[StatusEvent]) -> list[tuple[str, str]]:
    """The instances of these events not noted by this process for TOUCH_EVERY seconds."""
    now = time.monotonic()
    due = []
    for key in {(e.provider, e.instance_id) for e in events if e.instance_id}:
        if now - TOUCHED.get(key, -TOUCH_EVERY) >= TOUCH_EVERY:
            TOUCHED[key] = now
            due.append(key)
    return sorted(due)


def touch_instances(due: list[tuple[str, str]]) -> None:
    """Note the instances' traffic once their batch committed, in a short transaction of its
    own; bookkeeping a failure does not undo: it is tried again with the next batch."""
    if not due:
        return
    try:
        with get_pool().connection() as conn:
            store.touch_instances(conn, due)
    except psycopg.Error as exc:
        for key in due:
            TOUCHED.pop(key, None)
        log.warning("instances' last status not noted: %s", exc)


@app.task(name=APPLY_EVENTS, base=GuardedTask)
def apply_events(payload: list[dict[str, Any]]) -> dict[str, int]:
    """Apply the events of one or more callbacks in one transaction."""
    events = load_events(payload)
    refused: Counter[tuple[str | None, str]] = Counter()
    started = time.perf_counter()
    with get_pool().connection() as conn:
        outcomes = store.apply_events(conn, events, refused)
    touch_instances(due_touches(events))
    counts = {outcome.value: count for outcome, count in outcomes.items()}
    count_applied(events, outcomes, refused, time.perf_counter() - started)
    message_ids = sorted({mask_message_id(e.message_id) for e in events})
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
                mask_message_id(event.message_id),
                event.status,
                mask_phone(event.phone),
                event.request_id,
            )
    return counts


@app.task(name=RECORD_CONNECTIONS, base=GuardedTask)
def record_connections(payload: list[dict[str, Any]]) -> int:
    """Record what a provider reported of an instance's connection (GET /instances)."""
    events = load_connections(payload)
    with get_pool().connection() as conn:
        new = store.record_connections(conn, events)
    for event in events:
        log.info(
            "connection provider=%s instance_id=%s state=%s raw_state=%s new=%d",
            event.provider,
            mask_numbers(event.instance_id),
            event.state,
            event.raw_state,
            new,
        )
    return new


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


@app.task(name=ERASE, base=GuardedTask)
def erase_phone(request: dict[str, Any]) -> dict[str, Any]:
    """A requested erasure (POST /erasures): every trace of a phone number, in the worker,
    where no web timeout cuts it short. Its log names the erasure, never the number."""
    with get_pool().connection() as conn:
        record = erasure.erase(conn, request["phone"], request["erasure"])
    log.info("erasure %s done: %s", record["id"], json.dumps(record["rows"]))
    return {"erasure": record["id"]}
