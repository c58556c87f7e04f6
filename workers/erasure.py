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

# What the catalogue query skips: the migrations' ledger, and the erasures' own record.
SKIPPED_TABLES = ("schema_migrations", "erasures")

PERSON_MESSAGES = """
SELECT provider, message_id FROM messages
WHERE phone = ANY (%(numbers)s)
   OR (message_id LIKE ANY (%(likes)s) AND message_id ~ %(pattern)s)
   OR (chat_kind IS DISTINCT FROM 'group' AND NOT COALESCE(is_group, false)
       AND chat_id LIKE ANY (%(likes)s) AND chat_id ~ %(pattern)s)
FOR UPDATE
"""

DELETE_BY_MESSAGE = """
DELETE FROM {table} AS t
USING unnest(%(providers)s::text[], %(ids)s::text[]) AS d(provider, message_id)
WHERE t.provider = d.provider AND t.message_id = d.message_id
"""

# Text and JSON columns of every table (partitions are reached through their parent).
COLUMNS = """
SELECT c.table_name, c.column_name, c.data_type
FROM information_schema.columns c
JOIN pg_class t ON t.relname = c.table_name AND t.relnamespace = current_schema()::regnamespace
WHERE c.table_schema = current_schema()
  AND c.data_type IN ('text', 'jsonb', 'json', 'character varying')
  AND t.relkind IN ('r', 'p') AND NOT t.relispartition
  AND c.table_name <> ALL (%(skipped)s)
ORDER BY c.table_name, c.ordinal_position
"""

RECORD = "INSERT INTO erasures (rows) VALUES (%s) RETURNING id, erased_at"


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


def erase(conn: psycopg.Connection, phone: str) -> dict[str, Any]:
    """Erase every trace of ``phone``; return the erasure's record (id, erased_at, rows)."""
    found = numbers(phone)
    params: dict[str, Any] = {
        "numbers": found,
        "likes": [f"%{n}%" for n in found],  # cheap: the regular expression runs on few rows
        "pattern": pattern(found),
    }
    token = f"erased:{secrets.token_hex(8)}"
    rows: dict[str, dict[str, int]] = {"removed": {}, "anonymised": {}}

    def count(how: str, table: str, n: int) -> None:
        if n:
            rows[how][table] = n

    with conn.transaction(), conn.cursor() as cur:
        keys = cur.execute(PERSON_MESSAGES, params).fetchall()
        doomed = {"providers": [k[0] for k in keys], "ids": [k[1] for k in keys]}
        if keys:
            for table in ("status_events", "receipts", "changes", "messages"):
                statement = sql.SQL(DELETE_BY_MESSAGE).format(table=sql.Identifier(table))
                count("removed", table, cur.execute(statement, doomed).rowcount)
        columns: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in cur.execute(COLUMNS, {"skipped": list(SKIPPED_TABLES)}):
            columns.setdefault(table, []).append((column, kind))
        for table, named in columns.items():
            changed = cur.execute(anonymise(table, named), {**params, "token": token}).rowcount
            count("anonymised", table, changed)
        record = cur.execute(RECORD, (json.dumps(rows),)).fetchone()
    assert record is not None
    return {"id": record[0], "erased_at": record[1], "rows": rows}


def anonymise(table: str, named: list[tuple[str, str]]) -> sql.Composed:
    """UPDATE replacing the number with the token in these columns of the rows holding it."""
    sets, holds = [], []
    for column, kind in named:
        as_text = sql.SQL("{}::text").format(sql.Identifier(column))
        replaced: sql.Composable = sql.SQL(
            "regexp_replace({}, %(pattern)s, %(token)s, 'g')"
        ).format(as_text)
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
