"""List, replay and discard dead letters:
`python -m workers.deadletters list [--all] | replay ID ... | --all | discard ID ...`."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from workers.celery_app import BROKER, app
from workers.core import store
from workers.core.db import database_url


def list_letters(conn: psycopg.Connection, pending: bool) -> None:
    """Print one line per dead letter."""
    for letter in store.fetch_dead_letters(conn, pending=pending):
        replayed = letter["replayed_at"].isoformat() if letter["replayed_at"] else "-"
        discarded = letter["discarded_at"].isoformat() if letter["discarded_at"] else "-"
        print(
            f"{letter['id']}\t{letter['created_at'].isoformat()}\t{letter['task_name']}\t"
            f"deliveries={letter['deliveries']}\treplayed={replayed}\tdiscarded={discarded}\t"
            f"{letter['error']}"
        )


def discard(conn: psycopg.Connection, ids: list[int]) -> list[int]:
    """Take dead letters off the pending list (the rows are kept), all or none: return the
    ids that name no dead letter, and then discard nothing."""
    missing = [letter_id for letter_id in ids if not store.discard_dead_letter(conn, letter_id)]
    if missing:
        conn.rollback()
    else:
        conn.commit()
    return missing


def send_again(task_name: str, payload: Any, summary: str) -> None:
    """Publish a task message durably (workers/brokers/broker.py) with the workers' Celery app."""
    BROKER.publish(app, task_name, payload, task_id=uuid.uuid4().hex, summary=summary)


def replay(
    conn: psycopg.Connection,
    ids: list[int],
    every: bool,
    publish: Callable[[str, Any, str], None] = send_again,
) -> int:
    """Put dead letters back on the queue under new task ids; return how many."""
    letters = (
        store.fetch_dead_letters(conn, pending=True)
        if every
        else [row for i in ids for row in store.fetch_dead_letters(conn, letter_id=i)]
    )
    for letter in letters:
        # Applying events is idempotent, so a replay never applies anything twice.
        publish(letter["task_name"], letter["payload"], f"[replay of dead letter {letter['id']}]")
        store.mark_replayed(conn, letter["id"])
        conn.commit()
        print(f"replayed {letter['id']} ({letter['task_name']})")
    return len(letters)


def main(argv: list[str] | None = None) -> int:
    """Run the command."""
    parser = argparse.ArgumentParser(prog="python -m workers.deadletters", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list pending dead letters")
    listing.add_argument("--all", action="store_true", help="include replayed and discarded ones")
    # The old flag: pending only, which is now the default.
    listing.add_argument("--pending", action="store_true", help=argparse.SUPPRESS)
    again = commands.add_parser("replay", help="enqueue dead letters again")
    again.add_argument("ids", nargs="*", type=int)
    again.add_argument("--all", action="store_true", help="every pending dead letter")
    dropping = commands.add_parser("discard", help="take dead letters off the pending list")
    dropping.add_argument("ids", nargs="+", type=int)
    args = parser.parse_args(argv)
    with psycopg.connect(database_url()) as conn:
        if args.command == "list":
            list_letters(conn, pending=not args.all)
            return 0
        if args.command == "discard":
            missing = discard(conn, args.ids)
            if missing:
                parser.exit(1, f"no dead letter {missing[0]}\n")
            print(f"discarded {len(args.ids)}")
            return 0
        if not args.ids and not args.all:
            parser.error("replay needs IDs or --all")
        return 0 if replay(conn, args.ids, args.all) or not args.ids else 1


if __name__ == "__main__":
    sys.exit(main())
