"""Outbound webhooks: subscriptions read the change feed into deliveries, and the delivery
worker POSTs them, signed, at least once, in order per message.

How a change reaches a receiver (migrations/009_subscriptions.sql):
1. The status worker writes the change in the transaction that applied it (the outbox;
   workers/core/store.py). It knows nothing of subscriptions: a receiver never slows it down.
2. Every POLL_SECONDS the delivery worker's pump (DeliveryPump) reads each subscription's
   part of the feed after its cursor, in commit order, and writes deliveries: one per POST,
   in one of LANES lanes by message, holding one change or, with a batch size, several. Its
   cursor moves in the same transaction, so nothing is written twice or skipped.
3. It then leases the head of every lane that is due (not waiting out a backoff, not held by
   another sender, its subscription's circuit not open) and sends a ``ticks.deliver`` task for
   it on the deliveries queue.
4. The task POSTs it; on a 2xx it is delivered and the task goes on with the lane's next one;
   otherwise it is tried again after RETRY_SCHEDULE (with jitter) until it is MAX_AGE old,
   then dead-lettered (``flask --app app subscriptions replay``). A lane waits for its head,
   so one message's changes arrive in order; other lanes go on.
5. A worker killed mid-POST leaves its lease to expire; the pump leases the delivery again and
   it is sent again with the same webhook-id (at least once).
6. FAILURES_TO_OPEN failed attempts in a row open the subscription's circuit: nothing is sent
   to it for a pause that doubles up to PAUSE_MAX, then one probe; a 2xx closes it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
import zlib
from collections import defaultdict
from typing import Any, ClassVar, NamedTuple

import psycopg
from celery import bootsteps
from psycopg.rows import dict_row

from workers.celery_app import DELIVER, DELIVERY_QUEUE, app
from workers.core import store
from workers.core.db import get_pool
from workers.core.settings import seconds
from workers.guarded import SHUTTING_DOWN
from workers.metrics import metrics
from workers.outbound.post import Answer, allow_private, post, shown_url, signature_header

log = logging.getLogger(__name__)


def schedule(raw: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        delays = ()
    if not delays or min(delays) < 0:
        raise RuntimeError(
            f"DELIVERY_RETRY_SCHEDULE must be seconds separated by commas, not {raw!r}"
        )
    return delays


# After the first attempt fails, the next ones wait these many seconds (each +-20 % jitter);
# after the last, its interval repeats until the delivery is MAX_AGE old: 5 s, 30 s, 2 min,
# 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, then every 8 h (about 16 attempts in 24 h).
DEFAULT_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800"
RETRY_SCHEDULE = schedule(os.environ.get("DELIVERY_RETRY_SCHEDULE", DEFAULT_SCHEDULE))
MAX_AGE = seconds(os.environ, "DELIVERY_MAX_AGE", "86400", most=30 * 86400)
JITTER = 0.2
TIMEOUT = seconds(os.environ, "DELIVERY_TIMEOUT", "10", most=300)  # one POST, connecting included
POLL_SECONDS = seconds(os.environ, "DELIVERY_POLL_SECONDS", "0.5", most=60)
# A sender holds a delivery this long; killed, it is sent again after that.
LEASE_SECONDS = TIMEOUT + 20
TASK_BUDGET = 20.0  # seconds one task goes on along its lane before handing it back
LANES = 8  # fixed: a message's lane must not change while it has deliveries pending
PUMP_LIMIT = 2000  # changes read per subscription per round
FAILURES_TO_OPEN = 5
PAUSE_FIRST = seconds(os.environ, "DELIVERY_CIRCUIT_PAUSE", "30")
PAUSE_MAX = 900.0
EXPIRE_EVERY = 30.0


def lane_of(provider: str, message_id: str) -> int:
    """A message's lane: stable across processes and releases."""
    return zlib.crc32(f"{provider}\0{message_id}".encode()) % LANES


def next_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempts + 1``, after ``attempts`` failed ones."""
    base = RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1]
    delay = base * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter, not a secret
    if retry_after is not None:  # the receiver asked for more time (429, 503): up to an hour
        delay = max(delay, min(retry_after, 3600.0))
    return delay


# -- the pump: the feed into deliveries -----------------------------------------------------

LOCK_SUBSCRIPTION = """
SELECT id, providers, statuses, batch_size, cursor_txid::text AS cursor_txid, cursor_id
FROM subscriptions WHERE id = %s FOR UPDATE SKIP LOCKED
"""

INSERT_DELIVERY = """
INSERT INTO deliveries (subscription_id, lane, body, change_count, first_change_at,
                        expires_at)
VALUES (%(subscription_id)s, %(lane)s, %(body)s, %(change_count)s, %(first_change_at)s,
        now() + %(max_age)s * interval '1 second')
"""

MOVE_CURSOR = "UPDATE subscriptions SET cursor_txid = %s::xid8, cursor_id = %s WHERE id = %s"


def envelope(row: dict[str, Any]) -> dict[str, Any]:
    """One change as POSTed (Standard Webhooks' type, timestamp and data)."""
    return {
        "type": store.change_type(row),
        "timestamp": row["created_at"].isoformat(),
        "data": store.change_document(row),
    }


def body(envelopes: list[dict[str, Any]], batch_size: int) -> str:
    """The JSON POSTed: one change as an object, or (batching) an array, even of one."""
    document = envelopes if batch_size > 1 else envelopes[0]
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def pump(conn: psycopg.Connection, subscription_id: str) -> int:
    """Read one round of the feed into this subscription's deliveries; return the number of
    changes read (wanted or not). Another pump on the same subscription is skipped."""
    with conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            sub = cur.execute(LOCK_SUBSCRIPTION, (subscription_id,)).fetchone()
        if sub is None:
            return 0
        rows = store.fetch_changes(conn, (int(sub["cursor_txid"]), sub["cursor_id"]), PUMP_LIMIT)
        if not rows:
            return 0
        lanes: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if sub["providers"] and row["provider"] not in sub["providers"]:
                continue
            instance = row["kind"] == "instance"  # every subscription of its provider
            if sub["statuses"] and not instance and row["status"] not in sub["statuses"]:
                continue
            lanes[lane_of(row["provider"], row["message_id"] or row["instance_id"])].append(row)
        size = sub["batch_size"]
        made = [
            (lane, changes[start : start + size])
            for lane, changes in lanes.items()
            for start in range(0, len(changes), size)
        ]
        made.sort(key=lambda item: (int(item[1][0]["txid"]), item[1][0]["id"]))  # feed order
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_DELIVERY,
                [
                    {
                        "subscription_id": subscription_id,
                        "lane": lane,
                        "body": body([envelope(row) for row in chunk], size),
                        "change_count": len(chunk),
                        "first_change_at": min(row["created_at"] for row in chunk),
                        "max_age": MAX_AGE,
                    }
                    for lane, chunk in made
                ],
            )
            last = rows[-1]
            cur.execute(MOVE_CURSOR, (last["txid"], last["id"], subscription_id))
    return len(rows)


# -- dispatch: lease the heads of due lanes ------------------------------------------------

DUE_HEADS = """
SELECT s.id AS subscription_id, s.failures, head.id, head.lane
FROM subscriptions s
CROSS JOIN generate_series(0, %(lanes)s - 1) AS lanes (lane)
CROSS JOIN LATERAL (
    SELECT d.id, d.lane, d.next_attempt_at, d.leased_until FROM deliveries d
    WHERE d.subscription_id = s.id AND d.lane = lanes.lane
      AND d.delivered_at IS NULL AND d.dead_at IS NULL
    ORDER BY d.id
    LIMIT 1
) AS head
WHERE head.next_attempt_at <= now()
  AND (head.leased_until IS NULL OR head.leased_until < now())
  AND (s.paused_until IS NULL OR s.paused_until <= now())
ORDER BY s.id, head.id
"""

LEASE = """
UPDATE deliveries SET leased_until = now() + %(lease)s * interval '1 second',
                      lease_token = %(token)s
WHERE id = %(id)s AND delivered_at IS NULL AND dead_at IS NULL
  AND (leased_until IS NULL OR leased_until < now())
RETURNING id
"""

# A half-open circuit lets one probe through: the others wait until it has an answer.
HOLD_FOR_PROBE = """
UPDATE subscriptions SET paused_until = now() + %(lease)s * interval '1 second' WHERE id = %(id)s
"""

EXPIRE = """
UPDATE deliveries SET dead_at = now(),
                      last_error = coalesce(last_error, 'expired before an attempt')
WHERE delivered_at IS NULL AND dead_at IS NULL AND expires_at <= now()
  AND (leased_until IS NULL OR leased_until < now())
"""


def lease_due(conn: psycopg.Connection) -> list[tuple[int, str]]:
    """Lease the head of every due lane; return (delivery id, lease token) to send."""
    leased = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        heads = cur.execute(DUE_HEADS, {"lanes": LANES}).fetchall()
        probing: set[str] = set()
        for head in heads:
            sub = head["subscription_id"]
            half_open = head["failures"] >= FAILURES_TO_OPEN  # then one probe at a time
            if half_open and sub in probing:
                continue
            token = str(uuid.uuid4())
            # The delivery first, then its subscription: the order a sender recording an
            # answer takes its locks in, so the two never deadlock.
            found = cur.execute(
                LEASE, {"id": head["id"], "token": token, "lease": LEASE_SECONDS}
            ).fetchone()
            if not found:
                continue
            if half_open:
                probing.add(sub)
                cur.execute(HOLD_FOR_PROBE, {"id": sub, "lease": LEASE_SECONDS})
            leased.append((head["id"], token))
    return leased


def subscription_ids(conn: psycopg.Connection) -> list[str]:
    with conn.transaction():
        return [row[0] for row in conn.execute("SELECT id FROM subscriptions ORDER BY id")]


# -- sending ----------------------------------------------------------------------------

# What a sender needs of a delivery and its subscription.
SENDING = """
SELECT d.id, d.subscription_id, d.lane, d.webhook_id::text AS webhook_id, d.body,
       d.change_count, d.attempts, s.url, s.batch_size, s.secret, s.previous_secret,
       s.previous_secret_expires_at > now() AS previous_in_force
FROM {deliveries} d JOIN subscriptions s ON s.id = d.subscription_id
"""

# A sender takes up its lease: only while it has not run out (a task that waited longer in
# the queue than its lease finds another sender has it), and renews it from now.
LOAD = """
WITH taken AS (
    UPDATE deliveries SET leased_until = now() + %(lease)s * interval '1 second'
    WHERE id = %(id)s AND lease_token = %(token)s AND leased_until > now()
      AND delivered_at IS NULL AND dead_at IS NULL
    RETURNING *
)""" + SENDING.format(deliveries="taken")

# A 2xx, in one statement: the delivery is delivered; the subscription's streak of failures,
# if any, ends (its row is written only when that says something new, or once a second, so
# a busy subscription's row is neither rewritten for every POST nor locked against its pump),
# and then its deliveries waiting out a backoff are due at once; and, with go_on, the lane's
# next delivery is leased to the same sender and returned, if due.
# (The statement sees the lane as it was before it: the next is its first pending but this
# one, a dead letter replayed meanwhile included, so a lane never has two senders.)
DELIVERED = (
    """
WITH done AS (
    UPDATE deliveries SET delivered_at = now(), attempts = attempts + 1,
                          last_status = %(status)s, last_error = NULL, leased_until = NULL
    WHERE id = %(id)s AND lease_token = %(token)s AND delivered_at IS NULL AND dead_at IS NULL
    RETURNING subscription_id, lane, extract(epoch FROM now() - first_change_at) AS latency
), ok AS (
    UPDATE subscriptions s SET failures = 0, paused_until = NULL, last_success_at = now()
    FROM done
    WHERE s.id = done.subscription_id
      AND (s.failures > 0 OR s.paused_until IS NOT NULL OR s.last_success_at IS NULL
           OR s.last_success_at < now() - interval '1 second')
), wake AS (  -- the receiver is back: what waits out a backoff is due now, in every lane
    UPDATE deliveries w SET next_attempt_at = now()
    FROM done JOIN subscriptions s ON s.id = done.subscription_id AND s.failures > 0
    WHERE w.subscription_id = done.subscription_id AND w.id <> %(id)s
      AND w.delivered_at IS NULL AND w.dead_at IS NULL AND w.next_attempt_at > now()
), following AS (
    UPDATE deliveries d SET leased_until = now() + %(lease)s * interval '1 second',
                            lease_token = %(token)s
    FROM done
    WHERE %(go_on)s AND d.id = (
        SELECT n.id FROM deliveries n
        WHERE n.subscription_id = done.subscription_id AND n.lane = done.lane
          AND n.delivered_at IS NULL AND n.dead_at IS NULL AND n.id <> %(id)s
        ORDER BY n.id
        LIMIT 1
    )
      AND d.delivered_at IS NULL AND d.dead_at IS NULL
      AND d.next_attempt_at <= now() AND (d.leased_until IS NULL OR d.leased_until < now())
    RETURNING d.*
)
SELECT done.latency, next.*
FROM done LEFT JOIN ("""
    + SENDING.format(deliveries="following")
    + """) AS next ON true
"""
)

FAILED = """
UPDATE deliveries SET attempts = attempts + 1, last_status = %(status)s, last_error = %(error)s,
       leased_until = NULL,
       next_attempt_at = now() + %(delay)s * interval '1 second',
       dead_at = CASE WHEN now() + %(delay)s * interval '1 second' >= expires_at
                      THEN now() END
WHERE id = %(id)s AND lease_token = %(token)s AND delivered_at IS NULL AND dead_at IS NULL
RETURNING dead_at IS NOT NULL AS dead
"""

SUBSCRIPTION_FAILED = """
UPDATE subscriptions SET failures = failures + 1, last_failure_at = now(),
       last_error = %(error)s,
       paused_until = CASE WHEN failures + 1 >= %(threshold)s
                           THEN now() + least(%(pause_max)s, %(pause)s
                                * 2 ^ least(20, greatest(0, failures + 1 - %(threshold)s)))
                                * interval '1 second' END
WHERE id = %(subscription_id)s
RETURNING failures
"""


def request_parts(delivery: dict[str, Any], timestamp: int) -> tuple[bytes, dict[str, str]]:
    """The body and the Standard Webhooks headers of one delivery."""
    body = delivery["body"].encode()
    webhook_id = "msg_" + delivery["webhook_id"].replace("-", "")
    keys = [delivery["secret"]]
    if delivery["previous_secret"] and delivery["previous_in_force"]:
        keys.append(delivery["previous_secret"])
    return body, {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, webhook_id, timestamp, body),
    }


def record(
    conn: psycopg.Connection, delivery: dict[str, Any], token: str, answer: Answer, go_on: bool
) -> dict[str, Any] | None:
    """Record one attempt; on success, return the lane's next delivery, leased to the same
    sender, if it is due and ``go_on``."""
    measures = metrics()
    key = {"id": delivery["id"], "token": token, "subscription_id": delivery["subscription_id"]}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if answer.ok:
            done = cur.execute(
                DELIVERED,
                {**key, "status": answer.status, "go_on": go_on, "lease": LEASE_SECONDS},
            ).fetchone()
            if done is None:  # the lease was lost meanwhile: another sender has it
                return None
            measures.deliveries.labels("delivered").inc(delivery["change_count"])
            measures.delivery_latency.observe(float(done.pop("latency")))
            return done if done["id"] is not None else None
        delay = next_delay(delivery["attempts"] + 1, answer.retry_after)
        failed = cur.execute(
            FAILED, {**key, "status": answer.status, "error": answer.error, "delay": delay}
        ).fetchone()
        if failed is None:
            return None
        dead = failed["dead"]
        row = cur.execute(
            SUBSCRIPTION_FAILED,
            {
                **key,
                "error": answer.error,
                "threshold": FAILURES_TO_OPEN,
                "pause": PAUSE_FIRST,
                "pause_max": PAUSE_MAX,
            },
        ).fetchone()
        outcome = "dead" if dead else "failed"
        measures.deliveries.labels(outcome).inc(delivery["change_count"])
        log.warning(
            "delivery %s to %s of subscription %s %s: %s (attempt %d, %d failed in a row)%s",
            delivery["id"],
            shown_url(delivery["url"]),
            delivery["subscription_id"],
            "dead-lettered" if dead else "failed",
            answer.error,
            delivery["attempts"] + 1,
            row["failures"] if row else 0,
            "" if dead else f", next in {delay:.0f} s",
        )
    return None


class Lane(NamedTuple):
    """What one sender did along a lane: POSTs made, and why the last failed, if it did."""

    sent: int
    failure: str | None = None


class DeliveryFailed(Exception):
    """A ``ticks.deliver`` task whose POST failed (refused, timed out, not 2xx): the task ends
    as failed, in Flower and in the worker's log, not as a success that delivered nothing.

    The attempt is recorded first (retried after its backoff, or dead); the task's message is
    acknowledged all the same (acks_late acknowledges a task that raised), as before.
    """


def send_lane(conn: psycopg.Connection, delivery_id: int, token: str) -> Lane:
    """POST a leased delivery and, while they succeed and the budget lasts, the ones after it
    in its lane; return how many were POSTed, and the failure that stopped the lane, if any.
    (None POSTed and no failure: the lease ran out while the task waited; another sender has
    the delivery.)"""
    deadline = time.monotonic() + TASK_BUDGET
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        delivery = cur.execute(
            LOAD, {"id": delivery_id, "token": token, "lease": LEASE_SECONDS}
        ).fetchone()
    sent, failure = 0, None
    while delivery is not None:
        body, headers = request_parts(delivery, int(time.time()))
        answer = post(
            delivery["url"], body, headers, timeout=TIMEOUT, allow_private=allow_private()
        )
        sent += 1
        if not answer.ok:  # the lane stops here: it waits for this one
            failure = f"delivery {delivery['id']} to {shown_url(delivery['url'])} failed: "
            failure += answer.error or f"HTTP {answer.status}"
        go_on = time.monotonic() < deadline and not SHUTTING_DOWN.is_set()  # Ctrl-C is quick
        delivery = record(conn, delivery, token, answer, go_on)
    return Lane(sent, failure)


@app.task(name=DELIVER, acks_late=True, ignore_result=True, throws=(DeliveryFailed,))
def deliver(delivery_id: int, token: str) -> int:
    """POST one leased delivery, and the rest of its lane while they succeed (a while).

    A failed POST fails the task (DeliveryFailed: an expected failure, logged without a
    traceback; the attempt's details are in the warning record() logs)."""
    with get_pool().connection() as conn:  # the delivery worker's pool has one per thread
        lane = send_lane(conn, delivery_id, token)
    if lane.failure is not None:
        raise DeliveryFailed(lane.failure)
    return lane.sent


# -- the pump's timer, in the delivery worker only -------------------------------------------


def pump_once(celery: Any) -> int:
    """One round: every subscription's feed into deliveries, then the due lanes sent."""
    with get_pool().connection() as conn:
        for subscription_id in subscription_ids(conn):
            for _ in range(10):  # a long backlog over several rounds, not all at once
                if pump(conn, subscription_id) < PUMP_LIMIT:
                    break
        leased = lease_due(conn)
    for delivery_id, token in leased:
        celery.send_task(DELIVER, args=[delivery_id, token], queue=DELIVERY_QUEUE)
    return len(leased)


def expire_once() -> int:
    with get_pool().connection() as conn, conn.transaction():
        return conn.execute(EXPIRE).rowcount


class DeliveryPump(bootsteps.StartStopStep):
    """In a worker that consumes the deliveries queue: the pump, on a timer."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

    def include_if(self, worker: Any) -> bool:
        return DELIVERY_QUEUE in worker.app.amqp.queues.consume_from

    def start(self, worker: Any) -> None:
        self.last_expiry = 0.0
        self.last_warning = 0.0
        self.failing_since: float | None = None
        self.refs = [
            worker.timer.call_repeatedly(POLL_SECONDS, self.round, (worker.app,), priority=10)
        ]

    def stop(self, worker: Any) -> None:
        for ref in getattr(self, "refs", []):
            ref.cancel()

    def round(self, celery: Any) -> None:
        try:
            pump_once(celery)
            if time.monotonic() - self.last_expiry > EXPIRE_EVERY:
                expire_once()
                self.last_expiry = time.monotonic()
            self.failing_since = None
        except Exception as exc:  # the timer must outlive a database or broker outage
            now = time.monotonic()
            if self.failing_since is None or now - self.last_warning >= 60:
                log.warning(
                    "delivery pump: %s (tried again every %g s; said once a minute)",
                    f"{type(exc).__name__}: {exc}".strip(),
                    POLL_SECONDS,
                )
                self.last_warning = now
            if self.failing_since is None:
                self.failing_since = now


app.steps["worker"].add(DeliveryPump)
