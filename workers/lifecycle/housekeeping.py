"""Housekeeping: the history's daily partitions and the retention of everything Ticks keeps.

- The history (status_events) is partitioned by day, UTC (migrations/010). Partitions are
  created PARTITION_DAYS_AHEAD days ahead and dropped a whole day at a time once the day is
  older than HISTORY_RETENTION_DAYS: detached CONCURRENTLY (a lock inserting workers do not
  wait for), then dropped.
- Every other table loses its expired rows in batches of RETENTION_BATCH_SIZE, each batch its
  own short transaction; rows a worker has locked are skipped (SKIP LOCKED), never waited for,
  and taken on the next run. Messages go when not updated for MESSAGE_RETENTION_DAYS (with
  their group receipts), quarantined bodies and dead letters when pending for
  QUARANTINE_RETENTION_DAYS / DEAD_LETTER_RETENTION_DAYS or resolved (replayed, discarded)
  for the shorter *_RESOLVED_RETENTION_DAYS, the change feed after CHANGES_RETENTION_DAYS
  once every subscription has read it, deliveries once delivered for
  DELIVERY_RETENTION_DAYS (dead ones after DEAD_LETTER_RETENTION_DAYS).

It runs in the status worker's main process, in a thread of its own: at start (so a worker
that was down for days finds its partitions) and every HOUSEKEEPING_INTERVAL seconds. With
many workers, one does it at a time (a session advisory lock); the others skip that round.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from workers.core.settings import whole
from workers.lifecycle.recurring import Recurring

log = logging.getLogger(__name__)

ADVISORY_LOCK_ID = 0x7469636B_686F7573  # "tickhous": one housekeeper at a time
PARTITION = re.compile(r"^status_events_(\d{8})$")
# The longest a housekeeping statement waits for a lock before giving up for this round.
LOCK_TIMEOUT = "2s"
PAUSE_BETWEEN_BATCHES = 0.05  # seconds: the workers' transactions go first


def days(env: Mapping[str, str], name: str, default: int, least: int = 1) -> int:
    """A setting in whole days, from ``least`` to ten years."""
    return whole(env, name, default, least, 3650, "days")


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept (days), and how housekeeping goes about it."""

    history_days: int = 90
    message_days: int = 180
    quarantine_days: int = 30
    quarantine_resolved_days: int = 7
    dead_letter_days: int = 30
    dead_letter_resolved_days: int = 7
    changes_days: int = 7
    delivery_days: int = 7
    partitions_ahead: int = 7
    batch_size: int = 1000
    interval: int = 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Retention:
        d = cls()
        settings = cls(
            history_days=days(env, "HISTORY_RETENTION_DAYS", d.history_days),
            message_days=days(env, "MESSAGE_RETENTION_DAYS", d.message_days),
            quarantine_days=days(env, "QUARANTINE_RETENTION_DAYS", d.quarantine_days),
            quarantine_resolved_days=days(
                env, "QUARANTINE_RESOLVED_RETENTION_DAYS", d.quarantine_resolved_days
            ),
            dead_letter_days=days(env, "DEAD_LETTER_RETENTION_DAYS", d.dead_letter_days),
            dead_letter_resolved_days=days(
                env, "DEAD_LETTER_RESOLVED_RETENTION_DAYS", d.dead_letter_resolved_days
            ),
            changes_days=days(env, "CHANGES_RETENTION_DAYS", d.changes_days),
            delivery_days=days(env, "DELIVERY_RETENTION_DAYS", d.delivery_days),
            partitions_ahead=days(env, "PARTITION_DAYS_AHEAD", d.partitions_ahead, least=2),
            batch_size=whole(env, "RETENTION_BATCH_SIZE", d.batch_size, 1, 100000, "rows"),
            interval=whole(env, "HOUSEKEEPING_INTERVAL", d.interval, 1, 86400, "seconds"),
        )
        if settings.message_days <= settings.history_days:
            # The message row holds the dedupe (seen): without it, a late repeat of an event
            # still in the history would be recorded again. A history day goes up to a day
            # after its age, so the message must outlive it by a day at least.
            raise RuntimeError(
                f"MESSAGE_RETENTION_DAYS ({settings.message_days}) must be more than "
                f"HISTORY_RETENTION_DAYS ({settings.history_days}): a message keeps the "
                "record of what its history holds"
            )
        return settings


# Each statement deletes one batch and returns how many rows it removed (per table).
EXPIRE: dict[str, str] = {
    # Not updated since the cutoff; found along messages_created (created_at <= updated_at),
    # since an index on updated_at would cost every status update its HOT update.
    "messages": """
WITH doomed AS (
    SELECT provider, message_id FROM messages
    WHERE created_at < %(message_cutoff)s AND updated_at < %(message_cutoff)s
    ORDER BY created_at, provider, message_id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), gone_receipts AS (
    DELETE FROM receipts r USING doomed d
    WHERE r.provider = d.provider AND r.message_id = d.message_id
)
DELETE FROM messages m USING doomed d
WHERE m.provider = d.provider AND m.message_id = d.message_id
""",
    "quarantine": """
DELETE FROM quarantine WHERE id IN (
    SELECT id FROM quarantine
    WHERE (replayed_at IS NULL AND discarded_at IS NULL AND received_at < %(quarantine_cutoff)s)
       OR COALESCE(replayed_at, discarded_at) < %(quarantine_resolved_cutoff)s
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
""",
    "dead_letters": """
DELETE FROM dead_letters WHERE id IN (
    SELECT id FROM dead_letters
    WHERE (replayed_at IS NULL AND discarded_at IS NULL AND created_at < %(dead_letter_cutoff)s)
       OR COALESCE(replayed_at, discarded_at) < %(dead_letter_resolved_cutoff)s
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
""",
    # Instances' connection reports, as long as the history: the latest of each is kept in
    # instances whatever its age.
    "instance_events": """
DELETE FROM instance_events WHERE id IN (
    SELECT id FROM instance_events
    WHERE created_at < %(history_cutoff)s
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
""",
    # The funnel's counts (GET /insights), as long as the history.
    "insight_counts": """
DELETE FROM insight_counts WHERE ctid IN (
    SELECT ctid FROM insight_counts
    WHERE minute < %(history_cutoff)s
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
""",
    "deliveries": """
DELETE FROM deliveries WHERE id IN (
    SELECT id FROM deliveries
    WHERE delivered_at < %(delivery_cutoff)s OR dead_at < %(dead_letter_cutoff)s
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
""",
}

# The change feed goes as a prefix in its own order, (txid, id), so the last change removed
# (feed_horizon) marks exactly what a reader can no longer get. Each batch: the oldest rows by
# id (the feed is appended in that order) older than the cutoff give the key, capped by every
# subscription's cursor (never a change one has not read) and below every running
# transaction; then every change up to the key goes.
# (Ordered by the xid8 columns, not by their text copies: "10" sorts before "9".)
CHANGES_KEY = """
SELECT oldest.txid::text, oldest.id FROM (
    SELECT id, txid, created_at FROM changes ORDER BY id LIMIT %(batch)s
) AS oldest
WHERE oldest.created_at < %(changes_cutoff)s
  AND oldest.txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY oldest.txid DESC, oldest.id DESC
LIMIT 1
"""
SLOWEST_CURSOR = """
SELECT s.cursor_txid::text, s.cursor_id FROM subscriptions s
ORDER BY s.cursor_txid, s.cursor_id
LIMIT 1
"""
DELETE_CHANGES = "DELETE FROM changes WHERE (txid, id) <= (%(txid)s::xid8, %(id)s)"

MOVE_FEED_HORIZON = """
INSERT INTO feed_horizon (txid, id) VALUES (%(txid)s::xid8, %(id)s)
ON CONFLICT (one) DO UPDATE SET txid = EXCLUDED.txid, id = EXCLUDED.id
WHERE (EXCLUDED.txid, EXCLUDED.id) > (feed_horizon.txid, feed_horizon.id)
"""

LIST_PARTITIONS = """
SELECT c.relname, i.inhdetachpending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'status_events'::regclass
ORDER BY c.relname
"""


def partition_name(day: date) -> str:
    """The history's table of one day (as ticks_history_partition names it)."""
    return f"status_events_{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    """The day of one of the history's day tables, None for another table."""
    match = PARTITION.match(name)
    return datetime.strptime(match[1], "%Y%m%d").date() if match else None


def partitions(conn: psycopg.Connection) -> list[tuple[date, str, bool]]:
    """The history's partitions: (day, table name, detach pending), oldest first."""
    found = []
    for name, pending in conn.execute(LIST_PARTITIONS):
        day = day_of(name)
        if day is not None:
            found.append((day, name, pending))
    return found


def ensure_partitions(conn: psycopg.Connection, first: date, last: date) -> list[str]:
    """Create the history's partitions of the days from ``first`` to ``last`` that are
    missing; return their names."""
    created = []
    day = first
    while day <= last:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            row = conn.execute("SELECT ticks_history_partition(%s)", (day,)).fetchone()
        if row and row[0]:
            created.append(partition_name(day))
        day += timedelta(days=1)
    return created


# Day tables detached from the history but not dropped (a DROP that failed after its DETACH).
LIST_DETACHED = """
SELECT relname FROM pg_class
WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' AND NOT relispartition
  AND relname ~ '^status_events_[0-9]{8}$'
ORDER BY relname
"""


def drop_partitions(conn: psycopg.Connection, cutoff: datetime) -> list[str]:
    """Drop the history's partitions whose whole day is older than ``cutoff``; return them.

    ``conn`` is in autocommit: DETACH ... CONCURRENTLY runs outside a transaction block. One
    interrupted half-way stays "detach pending" and is finished (FINALIZE) first on the next
    run (PostgreSQL allows one pending at a time); a day detached whose DROP failed is dropped
    on the next run. A day a long transaction still reads (the lock timeout) ends this run's
    drops: the next run goes on from there.
    """

    def expired(day: date) -> bool:
        return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) <= cutoff

    dropped = []
    conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    for (name,) in conn.execute(LIST_DETACHED).fetchall():
        day = day_of(name)
        if day is not None and expired(day):
            conn.execute(f'DROP TABLE "{name}"')
            dropped.append(name)
    due = [(pending, name) for day, name, pending in partitions(conn) if expired(day)]
    for pending, name in sorted(due, key=lambda item: (not item[0], item[1])):
        how = "FINALIZE" if pending else "CONCURRENTLY"
        try:
            conn.execute(f'ALTER TABLE status_events DETACH PARTITION "{name}" {how}')
            conn.execute(f'DROP TABLE "{name}"')
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            log.warning("history partition %s not dropped this run: %s", name, exc)
            break
        dropped.append(name)
    return dropped


# What retention counts (ticks_retention_removed{table}): rows per table, and history days.
EXPIRED_TABLES = (*EXPIRE, "changes")
PARTITIONS_REMOVED = "status_events_partitions"


def expire(conn: psycopg.Connection, now: datetime, settings: Retention) -> dict[str, int]:
    """Delete every expired row, a batch per transaction; return how many per table."""
    params = {
        "batch": settings.batch_size,
        "message_cutoff": now - timedelta(days=settings.message_days),
        "quarantine_cutoff": now - timedelta(days=settings.quarantine_days),
        "quarantine_resolved_cutoff": now - timedelta(days=settings.quarantine_resolved_days),
        "dead_letter_cutoff": now - timedelta(days=settings.dead_letter_days),
        "dead_letter_resolved_cutoff": now - timedelta(days=settings.dead_letter_resolved_days),
        "changes_cutoff": now - timedelta(days=settings.changes_days),
        "delivery_cutoff": now - timedelta(days=settings.delivery_days),
        "history_cutoff": now - timedelta(days=settings.history_days),
    }
    removed = dict.fromkeys(EXPIRED_TABLES, 0)
    for table in removed:
        while True:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                if table == "changes":
                    count = expire_changes(conn, params)
                else:
                    count = conn.execute(EXPIRE[table], params).rowcount
            removed[table] += count
            if count < settings.batch_size:
                break
            time.sleep(PAUSE_BETWEEN_BATCHES)
    return removed


def expire_changes(conn: psycopg.Connection, params: dict[str, Any]) -> int:
    """One batch of the change feed's retention (CHANGES_KEY); return how many went."""
    key = conn.execute(CHANGES_KEY, params).fetchone()
    if key is None:
        return 0
    cursor = conn.execute(SLOWEST_CURSOR).fetchone()
    upto = (int(key[0]), key[1])
    if cursor is not None:
        upto = min(upto, (int(cursor[0]), cursor[1]))
    where = {"txid": str(upto[0]), "id": upto[1]}
    count = conn.execute(DELETE_CHANGES, where).rowcount
    if count:
        conn.execute(MOVE_FEED_HORIZON, where)
    return count


@dataclass
class Report:
    """What one housekeeping run did."""

    created: list[str]
    dropped: list[str]
    removed: dict[str, int]


def run(
    conninfo: str, settings: Retention | None = None, now: datetime | None = None
) -> Report | None:
    """One housekeeping run; None when another process is doing one. ``now`` is the
    database's clock unless given (tests move it)."""
    settings = settings or Retention.from_env()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_ID,)).fetchone()
        if not locked or not locked[0]:
            return None
        try:
            if now is None:
                now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            assert now is not None
            today = now.astimezone(UTC).date()
            created = ensure_partitions(
                conn, today, today + timedelta(days=settings.partitions_ahead)
            )
            dropped = drop_partitions(conn, now - timedelta(days=settings.history_days))
            removed = expire(conn, now, settings)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_ID,))
    removed[PARTITIONS_REMOVED] = len(dropped)
    return Report(created, dropped, removed)


class Housekeeping(Recurring):
    """In a worker that consumes the status queue: housekeeping in a thread of its own."""

    thread_name = "ticks-housekeeping"

    def prepare(self) -> None:
        from workers.core.db import database_url
        from workers.metrics import metrics

        for table in (*EXPIRED_TABLES, PARTITIONS_REMOVED):  # a series each, at 0
            metrics().retention_removed.labels(table)
        self.settings = Retention.from_env()
        self.conninfo = database_url()

    def interval(self) -> float:
        return self.settings.interval

    def round(self) -> None:
        try:
            report = run(self.conninfo, self.settings)
        except Exception as exc:  # the next round tries again; the worker goes on
            log.warning(
                "housekeeping failed (tried again in %g s): %s", self.settings.interval, exc
            )
            return
        if report is None:
            return
        from workers.metrics import metrics

        for table, count in report.removed.items():
            if count:
                metrics().retention_removed.labels(table).inc(count)
        log.info(
            "housekeeping: partitions created %s, dropped %s; rows removed %s",
            ",".join(report.created) or "none",
            ",".join(report.dropped) or "none",
            " ".join(f"{table}={count}" for table, count in report.removed.items()),
        )
