"""Quarantine and dead letters: endpoints behind API_TOKEN (reading both, discarding one), and
the Flask commands that act on them (`flask --app app quarantine ...`,
`flask --app app deadletters ...`). Both speak one vocabulary: pending (neither replayed nor
discarded) or all; replay; discard (off the pending list, the row kept)."""

from __future__ import annotations

import csv
import json
import uuid
from typing import Any

import click
from flask import Blueprint, Response, current_app, jsonify, request
from flask.cli import AppGroup, with_appcontext
from marshmallow import ValidationError

from app.auth import require_api_token
from app.database import database, pool
from app.errors import ApiError
from app.messages import load_list_query
from app.queue import EXTENSION, QueueUnavailable, send
from schemas.events import dump_events
from schemas.registry import REGISTRY, load_body
from workers import deadletters
from workers.celery_app import APPLY_EVENTS
from workers.core import store

bp = Blueprint("operations", __name__)
MAX_LIMIT = 1000


def listing_args() -> tuple[bool, int]:
    """Return (pending only, limit) from ?state= and ?limit=, or answer 400 naming the field."""
    state = request.args.get("state", "pending")
    if state not in ("pending", "all"):
        raise ApiError(400, "invalid query", errors={"state": ["must be pending or all"]})
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid query", errors={"limit": [f"must be 1 to {MAX_LIMIT}"]})
    return state == "pending", limit


def iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def quarantine_summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "request_id", "provider", "reason", "errors", "received_at", "created_at")
    summary = {key: iso(row[key]) for key in keys}
    summary["replayed_at"] = iso(row["replayed_at"])
    summary["discarded_at"] = iso(row["discarded_at"])
    return summary


def letter_summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "task_id", "task_name", "error", "deliveries", "created_at")
    summary = {key: iso(row[key]) for key in keys}
    summary["replayed_at"] = iso(row["replayed_at"])
    summary["discarded_at"] = iso(row["discarded_at"])
    payload = row["payload"]
    summary["events"] = len(payload) if isinstance(payload, list) else None
    return summary


# Row ids are bigserial: a larger number names no row (and PostgreSQL would refuse it).
MAX_ROW_ID = 2**63 - 1


@bp.get("/quarantine")
def list_quarantine() -> Response:
    """Quarantined bodies, oldest first: pending ones (neither replayed nor discarded) or all."""
    require_api_token()
    pending, limit = listing_args()
    with pool().connection() as conn:
        rows = store.fetch_quarantine(conn, pending=pending, limit=limit)
    return jsonify(items=[quarantine_summary(row) for row in rows])


@bp.get("/quarantine/<int:item_id>")
def show_quarantine(item_id: int) -> Response:
    """One quarantined body, raw."""
    require_api_token()
    rows = []
    if item_id <= MAX_ROW_ID:
        with pool().connection() as conn:
            rows = store.fetch_quarantine(conn, item_id=item_id)
    if not rows:
        raise ApiError(404, "no such quarantined body")
    row = rows[0]
    return jsonify(
        **quarantine_summary(row), raw_body=row["raw_body"], content_type=row["content_type"]
    )


@bp.post("/quarantine/<int:item_id>/discard")
def discard_quarantine(item_id: int) -> Response:
    """Take a quarantined body off the pending list (the row is kept); again changes nothing."""
    require_api_token()
    rows = []
    if item_id <= MAX_ROW_ID:
        with pool().connection() as conn:
            if store.resolve_quarantine(conn, item_id, "discarded"):
                rows = store.fetch_quarantine(conn, item_id=item_id)
    if not rows:
        raise ApiError(404, "no such quarantined body")
    return jsonify(**quarantine_summary(rows[0]))


@bp.get("/dead-letters")
def list_dead_letters() -> Response:
    """Dead letters, oldest first: pending ones (neither replayed nor discarded) or all."""
    require_api_token()
    pending, limit = listing_args()
    with pool().connection() as conn:
        rows = store.fetch_dead_letters(conn, pending=pending, limit=limit)
    return jsonify(items=[letter_summary(row) for row in rows])


@bp.get("/dead-letters/<int:letter_id>")
def show_dead_letter(letter_id: int) -> Response:
    """One dead letter, with its task payload."""
    require_api_token()
    rows = []
    if letter_id <= MAX_ROW_ID:
        with pool().connection() as conn:
            rows = store.fetch_dead_letters(conn, letter_id=letter_id)
    if not rows:
        raise ApiError(404, "no such dead letter")
    return jsonify(**letter_summary(rows[0]), payload=rows[0]["payload"])


@bp.post("/dead-letters/<int:letter_id>/discard")
def discard_dead_letter(letter_id: int) -> Response:
    """Take a dead letter off the pending list, and the status page's red (the row is kept,
    and can still be replayed by id); again changes nothing."""
    require_api_token()
    rows = []
    if letter_id <= MAX_ROW_ID:
        with pool().connection() as conn:
            if store.discard_dead_letter(conn, letter_id):
                rows = store.fetch_dead_letters(conn, letter_id=letter_id)
    if not rows:
        raise ApiError(404, "no such dead letter")
    return jsonify(**letter_summary(rows[0]))


# -- commands ------------------------------------------------------------------------------

quarantine_cli = AppGroup("quarantine", help="Bodies that failed validation.")
deadletters_cli = AppGroup("deadletters", help="Task messages the workers gave up on.")


def publish(task_name: str, payload: Any, summary: str) -> None:
    """Enqueue a task message durably (workers/brokers/broker.py), or stop the command."""
    try:
        celery = current_app.extensions[EXTENSION]
        send(celery, task_name, payload, task_id=uuid.uuid4().hex, summary=summary)
    except QueueUnavailable as exc:
        raise click.ClickException(f"the broker did not take it: {exc}") from exc


EXPORT_PAGE = 1000


@click.command("export")
@with_appcontext
@click.option("--provider", help="Only this provider's messages.")
@click.option("--status", help="Only messages at this status.")
@click.option("--instance-id", help="Only this instance's messages.")
@click.option("--phone", help="Only messages to this number.")
@click.option("--since", help="Created at or after (ISO 8601 with an offset).")
@click.option("--until", help="Created before (ISO 8601 with an offset).")
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-", help="CSV file.")
def export(output: Any, **options: str | None) -> None:
    """Write the messages matching the filters as CSV, oldest first (GET /messages' filters)."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        query = load_list_query({**given, "limit": EXPORT_PAGE})
    except ValidationError as err:
        raise click.UsageError(json.dumps(err.messages)) from None
    columns = [name.strip() for name in store.MESSAGE_COLUMNS.split(",")]
    writer = csv.DictWriter(output, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    written, after = 0, None
    with database() as conn:
        while True:
            rows = store.list_messages(conn, query, after, EXPORT_PAGE)
            conn.rollback()  # each page its own short transaction: no snapshot held for hours
            writer.writerows({key: iso(value) for key, value in row.items()} for row in rows)
            written += len(rows)
            if len(rows) < EXPORT_PAGE:
                break
            last = rows[-1]
            after = (last["created_at"], last["provider"], last["message_id"])
    click.echo(f"exported {written} messages", err=True)


@quarantine_cli.command("list")
@click.option("--all", "everything", is_flag=True, help="Include replayed and discarded ones.")
@click.option("--limit", default=100, show_default=True)
def quarantine_list(everything: bool, limit: int) -> None:
    """One line per quarantined body: id, received, provider, state, invalid fields."""
    with database() as conn:
        rows = store.fetch_quarantine(conn, pending=not everything, limit=limit)
    for row in rows:
        state = (
            "replayed" if row["replayed_at"] else "discarded" if row["discarded_at"] else "pending"
        )
        fields = ",".join(sorted(row["errors"])) if isinstance(row["errors"], dict) else "-"
        click.echo(
            f"{row['id']}\t{row['received_at'].isoformat()}\t{row['provider']}\t{state}\t{fields}"
        )


@quarantine_cli.command("show")
@click.argument("item_id", type=int)
def quarantine_show(item_id: int) -> None:
    """Print a quarantined body and why it was refused, as JSON."""
    with database() as conn:
        rows = store.fetch_quarantine(conn, item_id=item_id)
    if not rows:
        raise click.ClickException(f"no quarantined body {item_id}")
    row = rows[0]
    shown = {**quarantine_summary(row), "raw_body": row["raw_body"]}
    click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


@quarantine_cli.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every pending one.")
def quarantine_replay(ids: tuple[int, ...], everything: bool) -> None:
    """Validate stored bodies again (after a fix) and enqueue their events.

    Each is replayed once; its events are applied once however often they are enqueued.
    A body still invalid stays pending, and the command exits 1.
    """
    if not ids and not everything:
        raise click.UsageError("give IDs or --all")
    still_invalid = 0
    with database() as conn:
        rows = (
            store.fetch_quarantine(conn, pending=True)
            if everything
            else [row for i in ids for row in store.fetch_quarantine(conn, item_id=i)]
        )
        for row in rows:
            if row["replayed_at"] or row["discarded_at"]:
                click.echo(
                    f"{row['id']}: already {'replayed' if row['replayed_at'] else 'discarded'}"
                )
                continue
            outcome = replay_one(row)
            if outcome.startswith("still invalid"):
                still_invalid += 1
            else:
                store.resolve_quarantine(conn, row["id"], "replayed")
                conn.commit()
            click.echo(f"{row['id']}: {outcome}")
    if still_invalid:
        raise SystemExit(1)


def replay_one(row: dict[str, Any]) -> str:
    """Validate one stored body again; enqueue its events; say what happened."""
    try:
        record = REGISTRY[row["provider"]]
        body = load_body(record.media_type, row["raw_body"].encode())
        parsed = record.parse(body, received_at=row["received_at"], request_id=row["request_id"])
    except ValidationError as exc:
        return f"still invalid: {json.dumps(exc.messages, ensure_ascii=False, default=str)}"
    except (ValueError, RecursionError):
        return "still invalid: not JSON, or not a form"
    if parsed.errors:  # its valid part was enqueued when it arrived
        return f"still invalid: {json.dumps(parsed.errors, ensure_ascii=False, default=str)}"
    if parsed.ignored is not None:
        return f"replayed: a {parsed.ignored}, nothing to apply"
    publish(APPLY_EVENTS, dump_events(parsed.events), f"[replay of quarantine {row['id']}]")
    return f"replayed: {len(parsed.events)} events enqueued"


@quarantine_cli.command("discard")
@click.argument("ids", nargs=-1, type=int, required=True)
def quarantine_discard(ids: tuple[int, ...]) -> None:
    """Take quarantined bodies off the pending list (they stay in the table)."""
    with database() as conn:
        for item_id in ids:
            if not store.fetch_quarantine(conn, item_id=item_id):
                raise click.ClickException(f"no quarantined body {item_id}")
            store.resolve_quarantine(conn, item_id, "discarded")
        conn.commit()
    click.echo(f"discarded {len(ids)}")


@deadletters_cli.command("list")
@click.option("--all", "everything", is_flag=True, help="Include replayed and discarded ones.")
# The old flag: pending only, which is now the default (as for quarantine list).
@click.option("--pending", "_pending", is_flag=True, hidden=True)
def deadletters_list(everything: bool, _pending: bool) -> None:
    """One line per dead letter: id, created, task, deliveries, replayed, discarded, error."""
    with database() as conn:
        deadletters.list_letters(conn, pending=not everything)


@deadletters_cli.command("discard")
@click.argument("ids", nargs=-1, type=int, required=True)
def deadletters_discard(ids: tuple[int, ...]) -> None:
    """Take dead letters off the pending list (they stay in the table)."""
    with database() as conn:
        missing = deadletters.discard(conn, list(ids))
    if missing:
        raise click.ClickException(f"no dead letter {missing[0]}")
    click.echo(f"discarded {len(ids)}")


@deadletters_cli.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every pending one.")
def deadletters_replay(ids: tuple[int, ...], everything: bool) -> None:
    """Enqueue dead letters again (applying them twice changes nothing)."""
    if not ids and not everything:
        raise click.UsageError("give IDs or --all")
    with database() as conn:
        deadletters.replay(conn, list(ids), everything, publish=publish)
