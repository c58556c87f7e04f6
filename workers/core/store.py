"""All SQL. Dedupe and monotonicity are enforced here, by Postgres, for many workers at once.

How a batch is applied, in one transaction:
0. Repeats of a status their message already recorded, bringing nothing new, are counted as
   duplicates and go no further (KNOWN: one read, no lock).
1. Events are sorted by message, so every transaction takes message locks in one order
   and two workers never deadlock on each other's batches.
2. Per message, LOCK_MESSAGE upserts the row (creating it if new, filling identity fields it
   lacked) and so holds its lock until commit: every event of that message in other
   transactions waits behind it.
3. Per event, APPLY_EVENT inserts the history row unless the message's ``seen`` already holds
   its status (a repeat: nothing is written), and, only if it was inserted, adds the status
   to ``seen`` and moves the message with ticks_next_status(). The history is partitioned by
   day (migrations/010), so the dedupe lives on the message row, read and written under its
   lock. A group participant's receipt is also kept in receipts, once per (participant,
   status).
4. What took effect (the message moved, a failure believed, read_by_me recorded, a
   participant's furthest status advanced) is written to changes, the feed, in the same
   transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from schemas.events import StatusEvent
from schemas.failures import classify
from schemas.fields import chat_identity
from schemas.statuses import PENDING, PROGRESS, STATUSES, furthest, rank
from workers.core import insights

LOCK_MESSAGE = """
INSERT INTO messages AS m (provider, message_id, phone, chat_id, chat_kind, is_group,
                           instance_id)
VALUES (%(provider)s, %(message_id)s, %(phone)s, %(chat_id)s, %(chat_kind)s, %(is_group)s,
        %(instance_id)s)
ON CONFLICT (provider, message_id) DO UPDATE SET
    phone = COALESCE(m.phone, EXCLUDED.phone),
    chat_id = COALESCE(m.chat_id, EXCLUDED.chat_id),
    chat_kind = COALESCE(m.chat_kind, EXCLUDED.chat_kind),
    is_group = COALESCE(m.is_group, EXCLUDED.is_group)
-- A row with nothing to fill is locked all the same ("all rows will be locked when the ON
-- CONFLICT DO UPDATE action is taken", INSERT's reference) but not rewritten: no new row
-- version, no WAL for it (a seventh more events a second at 3 M history rows). An instance
-- id a stored message lacked is filled by FILL_INSTANCE, once the insights have read what
-- the message counted for under the instance it had.
WHERE (m.phone IS NULL AND EXCLUDED.phone IS NOT NULL)
   OR (m.chat_id IS NULL AND EXCLUDED.chat_id IS NOT NULL)
   OR (m.chat_kind IS NULL AND EXCLUDED.chat_kind IS NOT NULL)
   OR (m.is_group IS NULL AND EXCLUDED.is_group IS NOT NULL)
"""
FILL_INSTANCE = """
UPDATE messages m SET instance_id = v.instance_id
FROM unnest(%(providers)s::text[], %(ids)s::text[], %(instances)s::text[])
     AS v(provider, message_id, instance_id)
WHERE m.provider = v.provider AND m.message_id = v.message_id AND m.instance_id IS NULL
"""

# Each <status>_at keeps the first time that status was seen even when it did not move the
# message (a late received after read still fills received_at); failed_at and the reason
# are set only when the failure is believed.
APPLY_EVENT = """
WITH old AS (
    SELECT status, seen FROM messages
    WHERE provider = %(provider)s AND message_id = %(message_id)s
), ev AS (
    INSERT INTO status_events (provider, message_id, status, raw_status, occurred_at,
                               received_at, failure_reason, request_id, applied)
    SELECT %(provider)s, %(message_id)s, %(status)s, %(raw_status)s, %(occurred_at)s,
           %(received_at)s, %(failure_reason)s, %(request_id)s,
           %(status)s = 'read_by_me'
               OR ticks_next_status(old.status, %(status)s) IS DISTINCT FROM old.status
    FROM old
    WHERE NOT %(status)s = ANY (old.seen)  -- the dedupe: a status is recorded once
      -- One group member's failure is not the message's: it is kept in receipts only.
      AND NOT (%(participant)s::text IS NOT NULL AND %(status)s = 'failed')
    RETURNING applied
), moved AS (
    UPDATE messages m SET
        status = ticks_next_status(m.status, %(status)s),
        seen = array_append(m.seen, %(status)s::text),
        sent_at = CASE WHEN %(status)s = 'sent'
                       THEN COALESCE(m.sent_at, %(occurred_at)s) ELSE m.sent_at END,
        received_at = CASE WHEN %(status)s = 'received'
                           THEN COALESCE(m.received_at, %(occurred_at)s) ELSE m.received_at END,
        read_at = CASE WHEN %(status)s = 'read'
                       THEN COALESCE(m.read_at, %(occurred_at)s) ELSE m.read_at END,
        played_at = CASE WHEN %(status)s = 'played'
                         THEN COALESCE(m.played_at, %(occurred_at)s) ELSE m.played_at END,
        read_by_me_at = CASE WHEN %(status)s = 'read_by_me'
                             THEN COALESCE(m.read_by_me_at, %(occurred_at)s)
                             ELSE m.read_by_me_at END,
        failed_at = CASE WHEN %(status)s = 'failed' AND ev.applied
                         THEN %(occurred_at)s ELSE m.failed_at END,
        failure_reason = CASE WHEN %(status)s = 'failed' AND ev.applied
                              THEN %(failure_reason)s ELSE m.failure_reason END,
        failure_key = CASE WHEN %(status)s = 'failed' AND ev.applied
                           THEN %(failure_key)s ELSE m.failure_key END,
        updated_at = now()
    FROM ev
    WHERE m.provider = %(provider)s AND m.message_id = %(message_id)s
), receipt AS (
    INSERT INTO receipts (provider, message_id, participant, status, occurred_at, received_at)
    SELECT %(provider)s, %(message_id)s, %(participant)s, %(status)s, %(occurred_at)s,
           %(received_at)s
    WHERE %(participant)s::text IS NOT NULL
      AND %(status)s IN ('sent', 'received', 'read', 'played', 'failed')
    ON CONFLICT DO NOTHING
    RETURNING 1
), chat AS (
    SELECT chat_id, instance_id FROM messages
    WHERE provider = %(provider)s AND message_id = %(message_id)s
), seen AS (  -- this participant's receipts before this one
    SELECT coalesce(array_agg(status), '{}') AS statuses FROM receipts
    WHERE %(participant)s::text IS NOT NULL
      AND provider = %(provider)s AND message_id = %(message_id)s
      AND participant = %(participant)s
), change AS (  -- the message's change first, then the participant's
    INSERT INTO changes (provider, message_id, status, previous_status, participant,
                         occurred_at, failure_reason, chat_id, instance_id)
    SELECT %(provider)s, %(message_id)s, %(status)s, previous, participant, %(occurred_at)s,
           CASE WHEN %(status)s = 'failed' THEN %(failure_reason)s END,
           chat.chat_id, chat.instance_id
    FROM (
        SELECT 1 AS position, old.status AS previous, NULL::text AS participant
        FROM ev, old WHERE ev.applied
        UNION ALL
        SELECT 2, ticks_furthest(seen.statuses), %(participant)s
        FROM receipt, seen
        WHERE ticks_furthest(seen.statuses || %(status)s::text)
              IS DISTINCT FROM ticks_furthest(seen.statuses)
    ) AS effect, chat
    ORDER BY position
)
SELECT (SELECT applied FROM ev), old.status, EXISTS (SELECT FROM receipt) FROM old
"""

NEXT_STATUS = "SELECT ticks_next_status(%s, %s)"

# The feed, in commit order: only rows of transactions older than every one still running
# (their txid below the snapshot's xmin), so none can still appear behind a cursor.
SELECT_CHANGES = """
SELECT id, txid::text AS txid, kind, provider, message_id, status, previous_status, participant,
       occurred_at, failure_reason, chat_id, instance_id, figures, created_at
FROM changes
WHERE (txid, id) > (%(txid)s::xid8, %(id)s)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY changes.txid, changes.id  -- the column: the output txid is text ("10" < "9")
LIMIT %(limit)s
"""

# What a change is, to a reader of GET /changes and to a subscription's receiver.
CHANGE_FIELDS = (
    "provider",
    "message_id",
    "status",
    "previous_status",
    "participant",
    "occurred_at",
    "failure_reason",
    "chat_id",
    "instance_id",
)


def change_type(row: dict[str, Any]) -> str:
    """message.status, message.receipt (a group member's) or instance.health."""
    if row.get("kind") == "instance":
        return "instance.health"
    return "message.receipt" if row["participant"] else "message.status"


def change_document(row: dict[str, Any]) -> dict[str, Any]:
    """A change row as JSON: its cursor and type, then its fields (times in ISO 8601, UTC).
    An instance's health change names the instance, its new and previous health, why, when,
    and the figures behind it (workers/core/numbers.py)."""
    document: dict[str, Any] = {"cursor": f"{row['txid']}-{row['id']}", "type": change_type(row)}
    instance = row.get("kind") == "instance"
    for name in CHANGE_FIELDS:
        value = row[name]
        if instance and name in ("message_id", "failure_reason"):
            value = None
        document[name] = value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value
    if instance:  # status and previous_status are its health too
        document.update(
            health=row["status"],
            previous_health=row["previous_status"],
            reason=row["failure_reason"],
            figures=row["figures"],
        )
    return document


INSERT_QUARANTINE = """
INSERT INTO quarantine (request_id, provider, reason, errors, raw_body, content_type, received_at)
VALUES (%(request_id)s, %(provider)s, %(reason)s, %(errors)s, %(raw_body)s, %(content_type)s,
        %(received_at)s)
ON CONFLICT (request_id) DO NOTHING
"""

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (task_id, task_name, payload, error, deliveries)
VALUES (%(task_id)s, %(task_name)s, %(payload)s, %(error)s, %(deliveries)s)
-- The same task again (a replay that failed again): pending again, whatever was done before.
ON CONFLICT (task_id) DO UPDATE SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries,
    replayed_at = NULL, discarded_at = NULL
RETURNING id
"""

SELECT_DEAD_LETTERS = """
SELECT id, task_id, task_name, payload, error, deliveries, created_at, replayed_at, discarded_at
FROM dead_letters
WHERE (%(id)s::bigint IS NULL OR id = %(id)s)
  AND (%(pending)s = false OR (replayed_at IS NULL AND discarded_at IS NULL))
ORDER BY id
LIMIT %(limit)s
"""

MARK_REPLAYED = "UPDATE dead_letters SET replayed_at = now() WHERE id = %(id)s"

# Discarding twice keeps the first time: retention counts from it.
DISCARD_DEAD_LETTER = """
UPDATE dead_letters SET discarded_at = coalesce(discarded_at, now()) WHERE id = %(id)s
"""

SELECT_QUARANTINE = """
SELECT id, request_id, provider, reason, errors, raw_body, content_type, received_at,
       created_at, replayed_at, discarded_at
FROM quarantine
WHERE (%(id)s::bigint IS NULL OR id = %(id)s)
  AND (%(pending)s = false OR (replayed_at IS NULL AND discarded_at IS NULL))
ORDER BY id
LIMIT %(limit)s
"""

RESOLVE_QUARANTINE = {
    "replayed": "UPDATE quarantine SET replayed_at = now() WHERE id = %(id)s",
    "discarded": (
        "UPDATE quarantine SET discarded_at = coalesce(discarded_at, now()) WHERE id = %(id)s"
    ),
}

SELECT_MESSAGE = """
SELECT provider, message_id, status, phone, chat_id, chat_kind, is_group, instance_id, sent_at,
       received_at, read_at, played_at, failed_at, read_by_me_at, failure_reason, created_at,
       updated_at
FROM messages WHERE provider = %(provider)s AND message_id = %(message_id)s
"""

# Only the days from its message's creation on (less a day: a transaction that began before
# the message's and waited for its lock records an earlier created_at): the partitions before
# are pruned, not searched.
SELECT_EVENTS = """
SELECT status, raw_status, occurred_at, received_at, applied
FROM status_events
WHERE provider = %(provider)s AND message_id = %(message_id)s
  AND created_at >= %(created_at)s - interval '1 day'
ORDER BY occurred_at, id
"""

SELECT_RECEIPTS = """
SELECT participant, status, occurred_at
FROM receipts WHERE provider = %(provider)s AND message_id = %(message_id)s
ORDER BY participant, occurred_at, status
"""

# The status page. "Reached" counts each message once per status it reached in the window
# (status_events holds one row per message and status); a failure counts only when believed.
# The "hour" is the chart's: its ``minutes`` minutes up to now, the running one included (from
# hh:mm:00 59 minutes ago for 60). The day is 24 hours ('1 day' would follow the session's
# daylight saving).
# The latest failures are those most recently recorded: a failure applied made its message
# failed for good, and the history's partial index serves the order.
STATUS_COUNTS = """
SELECT provider, status,
       count(*) FILTER (
           WHERE created_at >= date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute'
       ) AS hour,
       count(*) AS day
FROM status_events
WHERE created_at >= now() - interval '24 hours'
  AND status NOT IN ('read_by_me', 'pending') AND (applied OR status <> 'failed')
GROUP BY provider, status
"""

EVENTS_PER_MINUTE = """
SELECT date_trunc('minute', created_at) AS minute,
       count(*) AS events,
       count(*) FILTER (WHERE status = 'failed' AND applied) AS failed
FROM status_events
WHERE created_at >= date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute'
GROUP BY 1
"""

LATEST_FAILED = """
SELECT m.provider, m.message_id, m.phone, m.failed_at, m.failure_reason,
       e.created_at AS recorded_at
FROM status_events e JOIN messages m USING (provider, message_id)
WHERE e.status = 'failed' AND e.applied
ORDER BY e.created_at DESC
LIMIT %(limit)s
"""

BACKLOG_COUNTS = """
SELECT now() AS now,
       (SELECT count(*) FROM quarantine
        WHERE replayed_at IS NULL AND discarded_at IS NULL) AS quarantine_pending,
       (SELECT count(*) FROM quarantine
        WHERE received_at >= now() - interval '24 hours') AS quarantine_day,
       (SELECT count(*) FROM dead_letters
        WHERE replayed_at IS NULL AND discarded_at IS NULL) AS dead_letters_pending,
       (SELECT count(*) FROM dead_letters
        WHERE created_at >= now() - interval '24 hours') AS dead_letters_day
"""


class Outcome(enum.Enum):
    """What became of one event."""

    APPLIED = "applied"
    REFUSED = "refused"  # recorded in history, but the rules kept the message where it was
    PENDING = "pending"  # not sent yet: recorded in history, never a status
    # A group participant's receipt of a status the message had already been reported at.
    RECEIPT = "receipt"
    DUPLICATE = "duplicate"  # seen before: nothing written


def event_order(event: StatusEvent) -> tuple[str, str, int]:
    """Sort key: by message (the lock order), then in progress order."""
    status_rank = PROGRESS.index(event.status) if event.status in PROGRESS else len(PROGRESS)
    return (event.provider, event.message_id, status_rank)


# What a message knows of who it went to (LOCK_MESSAGE fills what it lacks).
IDENTITY = ("phone", "chat_id", "chat_kind", "is_group", "instance_id")


def merged_identity(events: list[StatusEvent]) -> dict[str, Any]:
    """Return a message's identity fields, the first known value of each across events."""
    first = events[0]
    identity: dict[str, Any] = {"provider": first.provider, "message_id": first.message_id}
    for name in IDENTITY:
        identity[name] = next(
            (getattr(e, name) for e in events if getattr(e, name) is not None), None
        )
    return identity


def apply_events(
    conn: psycopg.Connection,
    events: list[StatusEvent],
    refused: Counter[tuple[str | None, str]] | None = None,
) -> Counter[Outcome]:
    """Apply events in the caller's transaction; return how many had each outcome.

    Every message is locked first, in sorted order (so concurrent batches never deadlock),
    then the events are applied in that order, and the insight counts follow
    (workers/core/insights.py). They go to the server as pipelines, a few round trips for the
    whole batch rather than one or two per event.
    ``refused``, when given, counts the (message status, event status) pairs the rules refused.
    """
    outcomes: Counter[Outcome] = Counter()
    ordered = sorted(events, key=event_order)
    if not ordered:
        return outcomes
    with conn.cursor() as cur:
        found, with_instance = known_repeats(cur, ordered)
        repeats = {id(e) for e in found}
        if repeats:
            outcomes[Outcome.DUPLICATE] += len(repeats)
            ordered = [e for e in ordered if id(e) not in repeats]
            if not ordered:
                return outcomes
        groups = [
            list(group)
            for _, group in itertools.groupby(ordered, key=lambda e: (e.provider, e.message_id))
        ]
        keys = [(group[0].provider, group[0].message_id) for group in groups]
        # One round trip for the locks and what the locked rows count for in the insights,
        # one for the events and the insights' update (conn.pipeline: they are queued and
        # sent together, each statement still run in order).
        with conn.pipeline(), conn.cursor() as locks, conn.cursor() as counts:
            identities = [merged_identity(group) for group in groups]
            locks.executemany(LOCK_MESSAGE, identities)
            before = insights.counted_before(counts, keys)
            # Messages that may lack the instance id the batch brings (not known with one).
            filling = [
                i
                for i in identities
                if i["instance_id"] is not None
                and (i["provider"], i["message_id"]) not in with_instance
            ]
            if filling:
                locks.execute(
                    FILL_INSTANCE,
                    {
                        "providers": [i["provider"] for i in filling],
                        "ids": [i["message_id"] for i in filling],
                        "instances": [i["instance_id"] for i in filling],
                    },
                )
            cur.executemany(APPLY_EVENT, [event_params(e) for e in ordered], returning=True)
            insights.add_changes(counts, keys, before)
        for event in ordered:
            applied, current, new_receipt = cur.fetchone() or (None, None, False)
            if applied is None:
                outcomes[Outcome.RECEIPT if new_receipt else Outcome.DUPLICATE] += 1
            elif applied:
                outcomes[Outcome.APPLIED] += 1
            elif event.status == PENDING:
                outcomes[Outcome.PENDING] += 1
            else:
                outcomes[Outcome.REFUSED] += 1
                if refused is not None:
                    refused[(current, event.status)] += 1
            cur.nextset()
    return outcomes


# What the messages of a batch already hold: the statuses they recorded and which identity
# fields they have. Read without a lock: a status recorded is never unrecorded (`seen` only
# grows while its row lives), so one already in the committed row is a repeat whoever else
# is writing the message meanwhile.
KNOWN = """
SELECT m.provider, m.message_id, m.seen, m.phone IS NOT NULL, m.chat_id IS NOT NULL,
       m.chat_kind IS NOT NULL, m.is_group IS NOT NULL, m.instance_id IS NOT NULL
FROM unnest(%(providers)s::text[], %(ids)s::text[]) AS k(provider, message_id)
JOIN messages m ON m.provider = k.provider AND m.message_id = k.message_id
"""


def known_repeats(
    cur: psycopg.Cursor[Any], events: list[StatusEvent]
) -> tuple[list[StatusEvent], set[tuple[str, str]]]:
    """The events that are repeats of a status their message recorded already, and bring no
    identity field it lacks: nothing to write, so neither locked nor applied (a repeat touches
    no page: 7 to 11 % more events a second in `make bench`'s scale workload, a quarter of it
    repeats). A group participant's receipt is never one here: it may be a new participant's.
    Also the messages found with an instance id (an instance id is never unset)."""
    keys = sorted({(e.provider, e.message_id) for e in events if e.participant is None})
    if not keys:
        return [], set()
    params = {"providers": [k[0] for k in keys], "ids": [k[1] for k in keys]}
    known = {(row[0], row[1]): row[2:] for row in cur.execute(KNOWN, params)}
    repeats = []
    for event in events:
        row = known.get((event.provider, event.message_id))
        if row is None or event.participant is not None or event.status not in row[0]:
            continue
        if all(
            has or getattr(event, name) is None for name, has in zip(IDENTITY, row[1:], strict=True)
        ):
            repeats.append(event)
    return repeats, {key for key, row in known.items() if row[-1]}


def event_params(event: StatusEvent) -> dict[str, Any]:
    """Return the query parameters of one event."""
    return {
        "provider": event.provider,
        "message_id": event.message_id,
        "status": event.status,
        "raw_status": event.raw_status,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "failure_reason": event.failure_reason,
        "failure_key": failure_key(event) if event.status == "failed" else None,
        "request_id": event.request_id,
        "participant": event.participant,
    }


def failure_key(event: StatusEvent) -> str:
    """``class:reason`` of a failure, as GET /insights groups them (schemas/failures.py)."""
    return ":".join(classify(event.provider, event.failure_reason))


MESSAGE_COLUMNS = (
    "provider, message_id, status, phone, chat_id, chat_kind, is_group, instance_id, sent_at, "
    "received_at, read_at, played_at, failed_at, read_by_me_at, failure_reason, created_at, "
    "updated_at"
)
# Filters of GET /messages: column -> SQL comparison.
EQUAL_FILTERS = ("provider", "status", "instance_id", "phone")


def list_messages(
    conn: psycopg.Connection,
    filters: dict[str, Any],
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Messages matching ``filters`` (provider, status, instance_id, phone: equal; since,
    until: created_at range), oldest first by (created_at, provider, message_id), after the
    keyset ``after``."""
    query, params = message_list_query(filters, after, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def message_list_query(
    filters: dict[str, Any], after: tuple[datetime, str, str] | None, limit: int
) -> tuple[sql.Composed, dict[str, Any]]:
    """The SQL of list_messages and its parameters: only the filters given, applied along
    messages_created (the list's order)."""
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit}
    for column in EQUAL_FILTERS:
        if filters.get(column) is not None:
            where.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
            params[column] = filters[column]
    if filters.get("since") is not None:
        where.append(sql.SQL("created_at >= %(since)s"))
        params["since"] = filters["since"]
    if filters.get("until") is not None:
        where.append(sql.SQL("created_at < %(until)s"))
        params["until"] = filters["until"]
    if after is not None:
        params.update(after_created=after[0], after_provider=after[1], after_id=after[2])
        where.append(
            sql.SQL(
                "(created_at, provider, message_id)"
                " > (%(after_created)s, %(after_provider)s, %(after_id)s)"
            )
        )
    query = sql.SQL(
        "SELECT {columns} FROM messages {where} "
        "ORDER BY created_at, provider, message_id LIMIT %(limit)s"
    ).format(
        columns=sql.SQL(MESSAGE_COLUMNS),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
    )
    return query, params


def feed_horizon(conn: psycopg.Connection) -> tuple[int, int] | None:
    """The (txid, id) of the last change retention removed from the feed, if any."""
    row = conn.execute("SELECT txid::text, id FROM feed_horizon").fetchone()
    return (int(row[0]), row[1]) if row else None


# How far the feed has come: the next transaction id not yet given (a cursor's txid must be
# below it), the last change id given (its id must not pass it), and the newest change a reader
# can see (below every running transaction, as SELECT_CHANGES reads).
FEED_FRONT = """
SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS next_txid,
       GREATEST((SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes_id_seq),
                (SELECT max(id) FROM changes)) AS last_id,
       (SELECT txid::text || '-' || id FROM changes
        WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY changes.txid DESC, changes.id DESC LIMIT 1) AS newest,
       (SELECT txid::text || '-' || id FROM feed_horizon) AS horizon
"""


def feed_ahead(conn: psycopg.Connection, after: tuple[int, int]) -> str | None:
    """The feed's newest cursor when ``after`` is past anything this feed ever gave (a database
    restored from a backup, a cursor of another installation), else None."""
    row = conn.execute(FEED_FRONT).fetchone()
    assert row is not None
    next_txid, last_id, newest, horizon = row
    if after[0] < int(next_txid) and after[1] <= last_id:
        return None
    return str(newest or horizon or "0")


def fetch_changes(
    conn: psycopg.Connection, after: tuple[int, int], limit: int
) -> list[dict[str, Any]]:
    """Changes after the (txid, id) cursor, oldest commit first."""
    params = {"txid": str(after[0]), "id": after[1], "limit": limit}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SELECT_CHANGES, params).fetchall()


def sql_next_status(conn: psycopg.Connection, current: str | None, incoming: str) -> str | None:
    """Ask the database's copy of the rule where ``current`` goes on ``incoming``."""
    row = conn.execute(NEXT_STATUS, (current, incoming)).fetchone()
    return row[0] if row else None


INSERT_INSTANCE_EVENT = """
INSERT INTO instance_events
    (provider, instance_id, state, raw_state, reason, occurred_at, received_at)
VALUES (%(provider)s, %(instance_id)s, %(state)s, %(raw_state)s, %(reason)s, %(occurred_at)s,
        %(received_at)s)
ON CONFLICT (provider, instance_id, occurred_at, raw_state) DO NOTHING
"""

# The latest report wins, by when it happened by the provider's clock (a time more than a day
# past its receipt counts as its receipt), then by when it was received; since is when the
# instance entered its state: kept while reports repeat the state.
UPSERT_INSTANCE = """
INSERT INTO instances AS i
    (provider, instance_id, state, raw_state, reason, reported_at, received_at, since)
SELECT %(provider)s, %(instance_id)s, %(state)s, %(raw_state)s, %(reason)s, at,
       %(received_at)s, at
FROM (SELECT CASE WHEN %(occurred_at)s > %(received_at)s + interval '1 day'
                  THEN %(received_at)s ELSE %(occurred_at)s END AS at) AS t
ON CONFLICT (provider, instance_id) DO UPDATE SET
    state = EXCLUDED.state,
    raw_state = EXCLUDED.raw_state,
    reason = EXCLUDED.reason,
    reported_at = EXCLUDED.reported_at,
    received_at = EXCLUDED.received_at,
    since = CASE WHEN i.state = EXCLUDED.state THEN i.since ELSE EXCLUDED.since END,
    updated_at = now()
WHERE (EXCLUDED.reported_at, EXCLUDED.received_at) >= (i.reported_at, i.received_at)
"""

TOUCH_INSTANCE = """
INSERT INTO instance_traffic AS t (provider, instance_id, last_status_at)
VALUES (%(provider)s, %(instance_id)s, now())
ON CONFLICT (provider, instance_id) DO UPDATE SET last_status_at = EXCLUDED.last_status_at
WHERE t.last_status_at < EXCLUDED.last_status_at
"""

SELECT_INSTANCES = """
SELECT provider, instance_id, i.state, i.raw_state, i.reason, i.reported_at, i.since,
       t.last_status_at, h.health, h.since AS health_since, h.reason AS health_reason,
       h.figures AS health_figures, h.checked_at AS health_checked_at
FROM (SELECT * FROM instances WHERE %(provider)s::text IS NULL OR provider = %(provider)s) i
FULL JOIN (SELECT * FROM instance_traffic
           WHERE %(provider)s::text IS NULL OR provider = %(provider)s) t
    USING (provider, instance_id)
FULL JOIN (SELECT * FROM instance_health
           WHERE %(provider)s::text IS NULL OR provider = %(provider)s) h
    USING (provider, instance_id)
ORDER BY provider, instance_id
"""


def record_connections(conn: psycopg.Connection, events: list[Any]) -> int:
    """Record instances' connection events (ConnectionEvent) in one transaction; return how
    many were new (a provider's retry of a report is the same report)."""
    new = 0
    with conn.transaction():
        for event in events:
            params = dataclasses.asdict(event)
            if conn.execute(INSERT_INSTANCE_EVENT, params).rowcount:
                new += 1
                conn.execute(UPSERT_INSTANCE, params)
    return new


def touch_instances(conn: psycopg.Connection, instances: Iterable[tuple[str, str]]) -> None:
    """Note that these (provider, instance_id) just had statuses applied, in the caller's
    transaction: a short one of its own (workers/tasks.py), never a batch's, so that a busy
    instance's row is not held while a batch is applied."""
    for provider, instance_id in instances:
        conn.execute(TOUCH_INSTANCE, {"provider": provider, "instance_id": instance_id})


def fetch_instances(conn: psycopg.Connection, provider: str | None = None) -> list[dict[str, Any]]:
    """Every instance with a reported connection state or a status applied."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SELECT_INSTANCES, {"provider": provider}).fetchall()


def record_quarantine(conn: psycopg.Connection, record: dict[str, Any]) -> bool:
    """Store a callback that failed validation; return False if it was stored already."""
    params = {**record, "errors": json.dumps(record["errors"])}
    return conn.execute(INSERT_QUARANTINE, params).rowcount == 1


def record_dead_letter(conn: psycopg.Connection, letter: dict[str, Any]) -> int:
    """Store a task message that will not be retried again, with why; return its id."""
    params = {**letter, "payload": json.dumps(letter["payload"])}
    row = conn.execute(INSERT_DEAD_LETTER, params).fetchone()
    assert row is not None  # an upsert RETURNING always returns its row
    return int(row[0])


def fetch_dead_letters(
    conn: psycopg.Connection,
    letter_id: int | None = None,
    pending: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Return dead letters (one by id, or only those neither replayed nor discarded), oldest
    first."""
    params = {"id": letter_id, "pending": pending, "limit": limit}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SELECT_DEAD_LETTERS, params).fetchall()


def fetch_quarantine(
    conn: psycopg.Connection,
    item_id: int | None = None,
    pending: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Return quarantined bodies (one by id, or only those neither replayed nor discarded)."""
    params = {"id": item_id, "pending": pending, "limit": limit}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SELECT_QUARANTINE, params).fetchall()


def resolve_quarantine(conn: psycopg.Connection, item_id: int, how: str) -> bool:
    """Mark a quarantined body replayed or discarded; False if there is none by that id."""
    return conn.execute(RESOLVE_QUARANTINE[how], {"id": item_id}).rowcount == 1


def mark_replayed(conn: psycopg.Connection, letter_id: int) -> None:
    """Record that a dead letter was put back on the queue."""
    conn.execute(MARK_REPLAYED, {"id": letter_id})


def discard_dead_letter(conn: psycopg.Connection, letter_id: int) -> bool:
    """Take a dead letter off the pending list (the row is kept); False if there is none."""
    return conn.execute(DISCARD_DEAD_LETTER, {"id": letter_id}).rowcount == 1


def fetch_message(
    conn: psycopg.Connection, provider: str, message_id: str
) -> dict[str, Any] | None:
    """Return a message with its event history, or None if it was never seen.

    The message, its events and its receipts are read in one snapshot (a repeatable-read
    transaction when the caller has none open), so a status is never shown beside a history
    that a transaction committing between two of the reads had already moved on.
    """
    key = {"provider": provider, "message_id": message_id}
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if fresh:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        message = cur.execute(SELECT_MESSAGE, key).fetchone()
        if message is None:
            return None
        since = {**key, "created_at": message.pop("created_at")}
        message["events"] = cur.execute(SELECT_EVENTS, since).fetchall()
        receipts = cur.execute(SELECT_RECEIPTS, key).fetchall()
    if message["chat_kind"] is None and message["chat_id"]:  # stored before chat kinds
        chat = chat_identity(message["chat_id"], is_group=message["is_group"])
        message["chat_kind"] = chat.chat_kind
        if chat.chat_kind not in (None, "user"):
            message["phone"] = None  # digits older versions took from a lid or group id
    message["receipts"] = summarise_receipts(receipts) if receipts else None
    return message


def summarise_receipts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per participant, the furthest status and when each status was first seen; and per
    status, how many participants reached it (read counts towards received, and so on)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:  # ordered by participant, then time
        seen.setdefault(row["participant"], {}).setdefault(row["status"], row["occurred_at"])
    participants = []
    counts = dict.fromkeys(STATUSES, 0)
    for participant, statuses in seen.items():
        reached = furthest(statuses)
        participants.append({"participant": participant, "status": reached, "seen": statuses})
        if reached in PROGRESS:
            for status in PROGRESS[: rank(reached) + 1]:
                counts[status] += 1
        elif reached is not None:
            counts[reached] += 1
    return {"participants": participants, "counts": counts}


def fetch_overview(
    conn: psycopg.Connection,
    minutes: int = 60,
    failures: int = 20,
    timeout_ms: int | None = None,
    more: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return what the status page shows, read at one moment (one REPEATABLE READ snapshot).

    counts: {(provider, status): {"hour": n, "day": n}}; per_minute: rows of minute, events,
    failed for the last ``minutes`` minutes, the current one included; failed: the latest
    ``failures`` failed messages; now, and the quarantine and dead-letter counts.
    With ``timeout_ms``, a statement running longer is cancelled (QueryCanceled). ``more``:
    other queries by name (the outbound subscriptions' overview), read in the same snapshot.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if timeout_ms is not None:
            cur.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        overview = cur.execute(BACKLOG_COUNTS).fetchone() or {}
        overview["counts"] = {
            (row["provider"], row["status"]): {"hour": row["hour"], "day": row["day"]}
            for row in cur.execute(STATUS_COUNTS, {"minutes": minutes})
        }
        overview["per_minute"] = cur.execute(EVENTS_PER_MINUTE, {"minutes": minutes}).fetchall()
        overview["failed"] = cur.execute(LATEST_FAILED, {"limit": failures}).fetchall()
        for name, query in (more or {}).items():
            overview[name] = cur.execute(query).fetchall()
    return overview
