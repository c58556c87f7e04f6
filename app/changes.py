"""GET /changes: what took effect, in commit order, from a cursor; optionally long-polled."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from app.messages import to_json
from workers import store

bp = Blueprint("changes", __name__)
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_WAIT_SECONDS = 30.0
# A long poll holds one of the web's threads, which webhooks need: at most this many wait at
# once in a process; past it, a request is answered at once with what there is.
MAX_WAITERS = 8
POLL_INTERVAL = 0.25
WAITERS = "ticks.changes.waiters"
# A cursor: <transaction id>-<change id> of the last change read; "0" is the start.
CURSOR = re.compile(r"(0|([0-9]{1,20})-([0-9]{1,19}))")


def parse_cursor(value: str) -> tuple[int, int]:
    """Return (txid, id) of a cursor, or answer 400 naming ``after``."""
    match = CURSOR.fullmatch(value)
    if not match:
        raise ApiError(400, "invalid query", errors={"after": ["not a cursor this API gave"]})
    if value == "0":
        return 0, 0
    txid, change_id = int(match.group(2)), int(match.group(3))
    if txid >= 2**64 or change_id >= 2**63:
        raise ApiError(400, "invalid query", errors={"after": ["not a cursor this API gave"]})
    return txid, change_id


def number(name: str, default: float, low: float, high: float) -> float:
    """A query number within bounds, or a 400 naming it."""
    raw = request.args.get(name)
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise ApiError(400, "invalid query", errors={name: [f"must be {low:g} to {high:g}"]})
    return value


def render(row: dict[str, Any]) -> dict[str, Any]:
    change = {key: to_json(value) for key, value in row.items() if key not in ("id", "txid")}
    return {"cursor": f"{row['txid']}-{row['id']}", **change}


def waiters() -> threading.BoundedSemaphore:
    semaphore = current_app.extensions.get(WAITERS)
    if semaphore is None:
        semaphore = current_app.extensions[WAITERS] = threading.BoundedSemaphore(MAX_WAITERS)
    return semaphore


def read(after: tuple[int, int], limit: int) -> list[dict[str, Any]]:
    with reading() as conn:
        return store.fetch_changes(conn, after, limit)


@bp.get("/changes")
def changes() -> Response:
    """Changes after ``after`` in commit order, at most ``limit``; with ``wait``, wait up to
    that many seconds for the first one."""
    require_api_token()
    cursor = request.args.get("after", "0")
    after = parse_cursor(cursor)
    limit = int(number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT))
    wait = number("wait", 0, 0, MAX_WAIT_SECONDS)
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
    found = [render(row) for row in rows]
    return jsonify(changes=found, next=found[-1]["cursor"] if found else cursor)
