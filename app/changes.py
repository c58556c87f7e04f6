"""GET /changes: what took effect, in commit order, from a cursor; optionally long-polled."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from schemas.api import ChangeQuerySchema
from workers.core import store

bp = Blueprint("changes", __name__)
QUERY = ChangeQuerySchema()
# A long poll holds one of the web's threads, which webhooks need: at most this many wait at
# once in a process; past it, a request is answered at once with what there is.
MAX_WAITERS = 8
POLL_INTERVAL = 0.25
WAITERS = "ticks.changes.waiters"
NOT_A_CURSOR = {"after": ["not a cursor this API gave"]}


def changes_query(args: Any) -> tuple[str, tuple[int, int], int, float]:
    """(cursor, its (txid, id), limit, wait) from the query, or a 400 naming the field.

    A cursor is <transaction id>-<change id> of the last change read; "0" is the start."""
    try:
        query = QUERY.load(args)
    except ValidationError as err:
        raise ApiError(400, "invalid query", errors=err.messages) from None
    cursor = query["after"]
    txid, _, change_id = cursor.partition("-")
    after = (int(txid), int(change_id or 0))
    if after[0] >= 2**64 or after[1] >= 2**63:
        raise ApiError(400, "invalid query", errors=NOT_A_CURSOR)
    return cursor, after, query["limit"], query["wait"]


def waiters() -> threading.BoundedSemaphore:
    semaphore = current_app.extensions.get(WAITERS)
    if semaphore is None:
        semaphore = current_app.extensions[WAITERS] = threading.BoundedSemaphore(MAX_WAITERS)
    return semaphore


def read(after: tuple[int, int], limit: int) -> list[dict[str, Any]]:
    with reading() as conn:
        return store.fetch_changes(conn, after, limit)


def check_not_ahead(after: tuple[int, int]) -> None:
    """A cursor this feed never gave: 409 naming the newest, or its reader would wait for
    ever and miss every change (its database restored from a backup, or another
    installation's cursor)."""
    if after == (0, 0):
        return
    with reading() as conn:
        newest = store.feed_ahead(conn, after)
    if newest is not None:
        raise ApiError(
            409,
            "cursor ahead of the feed",
            errors={
                "after": [
                    f"this feed never gave this cursor: its newest is {newest} (a database "
                    "restored from a backup, or a cursor of another installation?): read on "
                    "from there, or again from 0, and reconcile with GET /messages"
                ]
            },
            newest=newest,
        )


def check_not_expired(after: tuple[int, int]) -> None:
    """A cursor before the last change retention removed: 410, or its reader would go on
    unaware of what it missed (retention removes the feed in its own order, so a cursor at or
    past that change has missed nothing)."""
    if after == (0, 0):
        return
    with reading() as conn:
        horizon = store.feed_horizon(conn)
    if horizon is not None and after < horizon:
        raise ApiError(
            410,
            "cursor expired",
            errors={
                "after": [
                    "changes after this cursor were removed (CHANGES_RETENTION_DAYS): read "
                    "again from 0 (the oldest kept), and reconcile with GET /messages"
                ]
            },
        )


@bp.get("/changes")
def changes() -> Response:
    """Changes after ``after`` in commit order, at most ``limit``; with ``wait``, wait up to
    that many seconds for the first one."""
    require_api_token()
    cursor, after, limit, wait = changes_query(request.args)
    check_not_ahead(after)
    rows = read(after, limit)
    if not rows and wait > 0:
        semaphore = waiters()
        if semaphore.acquire(blocking=False):
            try:
                deadline = time.monotonic() + wait
                while not rows and time.monotonic() < deadline:
                    time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
                    rows = read(after, limit)
            finally:
                semaphore.release()
    # After the read: retention removing changes meanwhile cannot leave this page a gap.
    check_not_expired(after)
    found = [store.change_document(row) for row in rows]
    return jsonify(changes=found, next=found[-1]["cursor"] if found else cursor)
