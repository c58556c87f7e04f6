"""Erasure of one person's data by phone number (LGPD art. 18, GDPR art. 17).

In one transaction:
1. The person's own messages go, with their history, group receipts and changes: those sent
   to the number (phone), to a chat named by it (one-to-one chat ids), or whose id holds it
   (WAHA's ids embed the chat: ``true_5511...@c.us_3EB0...``).
2. Every other trace of the number, in every text and JSON column of every table (a group
   receipt's participant, a group id holding its creator's number, quarantined raw bodies,
   dead-letter payloads, outbound delivery bodies, failure reasons), is replaced by a random
   token made for this erasure (``erased:<hex>``): irreversible, since nothing ties the token
   to the number, while one person's receipts in a group still count as one participant.
   The columns are found in the database's catalogue, so a table added later is covered.
3. The erasure is recorded (when, how many rows it removed and anonymised per table), never
   the number.

Numbers match as whole digit runs, so another number holding these digits is left alone.
Brazilian mobile numbers are matched with and without the ninth digit (WhatsApp ids made
before 2016 carry them without it).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import psycopg
from psycopg import sql

from schemas.fields import digits_only
from workers.core import insights

# What the catalogue query skips: the migrations' ledger, and the erasures' own record.
SKIPPED_TABLES = ("schema_migrations", "erasures")

# A group message is not the person's: it stays, its traces of the number anonymised. Groups
# as schemas/fields.py classifies them (rows stored before chat kinds have none), and WAHA's
# group message ids (`true_<group>@g.us_<id>[_<participant>]`).
GROUP = r"""
    COALESCE(m.chat_kind = 'group' OR m.is_group
             OR m.chat_id ~ '(@g\.us|-group)$'
             OR split_part(m.chat_id, '@', 1) ~ '^[0-9]{8,}-[0-9]{9,}$'
             OR m.message_id ~ '@g\.us', false)
"""

PERSON_MESSAGES = f"""
SELECT m.provider, m.message_id FROM messages m
WHERE NOT {GROUP}
  AND (m.phone = ANY (%(numbers)s)
       OR (m.message_id LIKE ANY (%(likes)s) AND m.message_id ~ %(pattern)s)
       OR (m.chat_id LIKE ANY (%(likes)s) AND m.chat_id ~ %(pattern)s))
ORDER BY m.provider, m.message_id  -- locked in the workers' order
FOR UPDATE
"""

DELETE_BY_MESSAGE = """
DELETE FROM {table} AS t
USING unnest(%(providers)s::text[], %(ids)s::text[]) AS d(provider, message_id)
WHERE t.provider = d.provider AND t.message_id = d.message_id
"""

# Text and JSON columns of every table.
COLUMNS = """
SELECT c.table_name, c.column_name, c.data_type
FROM information_schema.columns c
JOIN pg_class t ON t.relname = c.table_name AND t.relnamespace = current_schema()::regnamespace
WHERE c.table_schema = current_schema()
  AND c.data_type IN ('text', 'jsonb', 'json', 'character varying')
  AND t.relkind IN ('r', 'p')
  -- Partitions are reached through their parent, except one being detached (invisible there).
  AND (NOT t.relispartition
       OR EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = t.oid AND i.inhdetachpending))
  AND c.table_name <> ALL (%(skipped)s)
ORDER BY c.table_name, c.ordinal_position
"""

RECORD = """
INSERT INTO erasures (erased_at, rows) VALUES (now(), %(rows)s)
RETURNING id, requested_at, erased_at, rows
"""
# A requested erasure (POST /erasures) is recorded when asked for, and completed here.
COMPLETE = """
UPDATE erasures SET erased_at = now(), rows = %(rows)s WHERE id = %(id)s AND erased_at IS NULL
RETURNING id, requested_at, erased_at, rows
"""
REQUEST = "INSERT INTO erasures DEFAULT VALUES RETURNING id, requested_at, erased_at, rows"
SELECT = "SELECT id, requested_at, erased_at, rows FROM erasures WHERE id = %(id)s"


def document(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """An erasure's record as the API and the command show it."""
    if row is None:
        return None
    erasure_id, requested_at, erased_at, rows = row
    return {
        "id": erasure_id,
        "status": "done" if erased_at else "pending",
        "requested_at": requested_at,
        "erased_at": erased_at,
        "rows": rows,
    }


def request(conn: psycopg.Connection) -> dict[str, Any]:
    """Record that an erasure was asked for (the number goes in its task message only)."""
    with conn.transaction():
        return document(conn.execute(REQUEST).fetchone())  # type: ignore[return-value]


def forget_request(conn: psycopg.Connection, erasure_id: int) -> None:
    """Take back the record of a request that could not be queued."""
    with conn.transaction():
        conn.execute("DELETE FROM erasures WHERE id = %s AND erased_at IS NULL", (erasure_id,))


def fetch(conn: psycopg.Connection, erasure_id: int) -> dict[str, Any] | None:
    return document(conn.execute(SELECT, {"id": erasure_id}).fetchone())


class InvalidPhone(ValueError):
    """Not a phone number that can be erased."""


def numbers(phone: str) -> list[str]:
    """The digit strings a phone number is stored as: its digits, and for a Brazilian
    mobile number the same with or without the ninth digit."""
    digits = digits_only(phone) or ""
    if not 8 <= len(digits) <= 15:
        raise InvalidPhone("must be a phone number with country code: 8 to 15 digits")
    found = [digits]
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        found.append(digits[:4] + digits[5:])
    elif digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":
        found.append(digits[:4] + "9" + digits[4:])
    return found


def pattern(found: list[str]) -> str:
    """A regular expression (PostgreSQL's) matching any of them as a whole run of digits."""
    longest_first = sorted(found, key=len, reverse=True)
    return "(?<![0-9])(" + "|".join(re.escape(n) for n in longest_first) + ")(?![0-9])"


# Number health's figures name a few sample messages (workers/core/numbers.py): an erased
# message's id leaves them (a Meta wamid holds the number in base64, which no digit run finds).
FORGET_SAMPLES = """
UPDATE {table} SET figures = jsonb_set(figures, '{{samples}}', (
    SELECT coalesce(jsonb_agg(sample), '[]'::jsonb)
    FROM jsonb_array_elements_text(figures -> 'samples') AS sample
    WHERE sample <> ALL (%(ids)s::text[])
))
WHERE figures ? 'samples' AND figures -> 'samples' ?| %(ids)s::text[]
"""


def erase(conn: psycopg.Connection, phone: str, erasure_id: int | None = None) -> dict[str, Any]:
    """Erase every trace of ``phone``; return the erasure's record (``document``): a new one,
    or the requested ``erasure_id`` completed (done again, it finds nothing more)."""
    found = numbers(phone)
    params: dict[str, Any] = {
        "numbers": found,
        "likes": [f"%{n}%" for n in found],  # cheap: the regular expression runs on few rows
        "pattern": pattern(found),
    }
    # A token per form of the number: two forms of one participant's number on one message
    # were two receipts before, and stay two (one token would make them collide).
    for n, number in enumerate(found):
        params[f"pattern_{n}"] = pattern([number])
        params[f"token_{n}"] = f"erased:{secrets.token_hex(8)}"
    rows: dict[str, dict[str, int]] = {"removed": {}, "anonymised": {}}

    def count(how: str, table: str, n: int) -> None:
        if n:
            rows[how][table] = n

    with conn.transaction(), conn.cursor() as cur:
        keys = cur.execute(PERSON_MESSAGES, params).fetchall()
        doomed = {"providers": [k[0] for k in keys], "ids": [k[1] for k in keys]}
        if keys:
            # The messages leave the insight counts, and the samples of number health.
            counted = insights.counted_before(cur, keys)
            for table in ("status_events", "receipts", "changes", "messages"):
                statement = sql.SQL(DELETE_BY_MESSAGE).format(table=sql.Identifier(table))
                count("removed", table, cur.execute(statement, doomed).rowcount)
            insights.add_changes(cur, keys, counted)
            for table in ("instance_health", "changes"):
                statement = sql.SQL(FORGET_SAMPLES).format(table=sql.Identifier(table))
                count("anonymised", table, cur.execute(statement, doomed).rowcount)
        columns: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in cur.execute(COLUMNS, {"skipped": list(SKIPPED_TABLES)}):
            columns.setdefault(table, []).append((column, kind))
        for table, named in columns.items():
            changed = cur.execute(anonymise(table, named, len(found)), params).rowcount
            count("anonymised", table, changed)
        record = None
        if erasure_id is not None:  # done twice (a redelivered task): the first count stays
            record = cur.execute(COMPLETE, {"rows": json.dumps(rows), "id": erasure_id}).fetchone()
            record = record or cur.execute(SELECT, {"id": erasure_id}).fetchone()
        if record is None:
            record = cur.execute(RECORD, {"rows": json.dumps(rows)}).fetchone()
    return document(record)  # type: ignore[return-value]


def anonymise(table: str, named: list[tuple[str, str]], forms: int) -> sql.Composed:
    """UPDATE replacing each form of the number with its token in these columns of the rows
    holding one."""
    sets, holds = [], []
    for column, kind in named:
        as_text = sql.SQL("{}::text").format(sql.Identifier(column))
        replaced: sql.Composable = as_text
        for n in range(forms):
            replaced = sql.SQL("regexp_replace({}, {}, {}, 'g')").format(
                replaced, sql.Placeholder(f"pattern_{n}"), sql.Placeholder(f"token_{n}")
            )
        if kind in ("jsonb", "json"):
            replaced = sql.SQL("({})::{}").format(replaced, sql.SQL(kind))
        holds.append(sql.SQL("({t} LIKE ANY (%(likes)s) AND {t} ~ %(pattern)s)").format(t=as_text))
        sets.append(
            sql.SQL(
                "{column} = CASE WHEN {text} ~ %(pattern)s THEN {replaced} ELSE {column} END"
            ).format(column=sql.Identifier(column), text=as_text, replaced=replaced)
        )
    return sql.SQL("UPDATE {table} SET {sets} WHERE {holds}").format(
        table=sql.Identifier(table),
        sets=sql.SQL(", ").join(sets),
        holds=sql.SQL(" OR ").join(holds),
    )
