"""Subscriptions and their deliveries in the database: what the CLI, the status page and the
metrics read and change (the delivery worker's own SQL is in workers/outbound/deliveries.py)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from workers.outbound.post import new_secret

INSERT = """
INSERT INTO subscriptions (id, url, providers, statuses, secret, batch_size, cursor_txid)
VALUES (%(id)s, %(url)s, %(providers)s, %(statuses)s, %(secret)s, %(batch_size)s,
        pg_snapshot_xmin(pg_current_snapshot()))
"""

# Per subscription: its settings, its health and its backlog (the pending index serves it).
OVERVIEW = """
SELECT s.id, s.url, s.providers, s.statuses, s.batch_size, s.failures, s.paused_until,
       s.last_success_at, s.last_failure_at, s.last_error, s.created_at,
       s.paused_until > now() AS paused,
       coalesce(p.backlog, 0) AS backlog, p.oldest AS oldest_pending,
       (SELECT count(*) FROM deliveries d
        WHERE d.subscription_id = s.id AND d.dead_at IS NOT NULL) AS dead
FROM subscriptions s
LEFT JOIN LATERAL (
    SELECT sum(change_count) AS backlog, min(first_change_at) AS oldest FROM deliveries d
    WHERE d.subscription_id = s.id AND d.delivered_at IS NULL AND d.dead_at IS NULL
) AS p ON true
ORDER BY s.created_at, s.id
"""

ROTATE = """
UPDATE subscriptions SET previous_secret = secret, secret = %(secret)s,
       previous_secret_expires_at = now() + %(grace)s
WHERE id = %(id)s
"""

DEAD = """
SELECT id, webhook_id, change_count, attempts, last_status, last_error, created_at, dead_at
FROM deliveries WHERE subscription_id = %(id)s AND dead_at IS NOT NULL
ORDER BY id LIMIT %(limit)s
"""

# A replayed delivery starts again: attempts from 0 and a new day to succeed in.
REPLAY = """
UPDATE deliveries SET dead_at = NULL, attempts = 0, next_attempt_at = now(),
       expires_at = now() + %(max_age)s * interval '1 second', leased_until = NULL,
       lease_token = NULL
WHERE subscription_id = %(id)s AND dead_at IS NOT NULL
  AND (%(ids)s::bigint[] IS NULL OR id = ANY (%(ids)s))
"""


def create(
    conn: psycopg.Connection,
    url: str,
    providers: list[str] | None,
    statuses: list[str] | None,
    batch_size: int,
) -> tuple[str, str]:
    """A new subscription, receiving the changes committed from now on; (its id, its secret)."""
    subscription_id = "sub_" + secrets.token_hex(8)
    secret = new_secret()
    conn.execute(
        INSERT,
        {
            "id": subscription_id,
            "url": url,
            "providers": providers or None,
            "statuses": statuses or None,
            "secret": secret,
            "batch_size": batch_size,
        },
    )
    return subscription_id, secret


def overview(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(OVERVIEW).fetchall()


def remove(conn: psycopg.Connection, subscription_id: str) -> bool:
    """Delete a subscription and its deliveries; False if there is none by that id."""
    return conn.execute("DELETE FROM subscriptions WHERE id = %s", (subscription_id,)).rowcount > 0


def rotate_secret(conn: psycopg.Connection, subscription_id: str, grace: timedelta) -> str | None:
    """A new secret; the old one still signs (a second signature) for ``grace``."""
    secret = new_secret()
    found = conn.execute(ROTATE, {"id": subscription_id, "secret": secret, "grace": grace})
    return secret if found.rowcount else None


def dead(conn: psycopg.Connection, subscription_id: str, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(DEAD, {"id": subscription_id, "limit": limit}).fetchall()


def replay(
    conn: psycopg.Connection, subscription_id: str, ids: list[int] | None, max_age: float
) -> int:
    """Put dead deliveries back in their lanes; return how many."""
    found = conn.execute(REPLAY, {"id": subscription_id, "ids": ids, "max_age": max_age})
    return found.rowcount


def failing_because(row: dict[str, Any]) -> str | None:
    """Why a failing subscription's last attempt failed (its receiver's answer, or why Ticks
    refused to call it), or None while it is not failing: what its health alone hides."""
    return row["last_error"] if row["failures"] else None


def state(row: dict[str, Any]) -> str:
    """A subscription's health in a word or three."""
    if row["paused"]:
        return f"paused ({row['failures']} failed in a row)"
    if row["failures"]:
        return f"failing ({row['failures']} in a row)"
    return "healthy"
