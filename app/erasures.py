"""Erasure of a person's data by phone number: ``POST /erasures`` (done by a worker) and
``GET /erasures/<id>`` behind API_TOKEN, and ``flask --app app erase --phone <number>`` (done
at once); workers/lifecycle/erasure.py does it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
import psycopg
from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.cli import with_appcontext

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from app.operations import MAX_ROW_ID, iso
from app.queue import EXTENSION, QueueUnavailable, send
from workers.celery_app import ERASE
from workers.lifecycle import erasure

bp = Blueprint("erasures", __name__)


def shown(record: dict[str, Any]) -> dict[str, Any]:
    return {key: iso(value) for key, value in record.items()}


@bp.post("/erasures")
def create_erasure() -> Response:
    """Ask for everything Ticks keeps about one phone number to be erased: 202, done by a
    worker (an erasure reads every table: no web timeout may cut it short)."""
    require_api_token()
    body = request.get_json(silent=True)
    phone = body.get("phone") if isinstance(body, dict) else None
    if not isinstance(phone, str):
        raise ApiError(400, "invalid body", errors={"phone": ["a phone number is required"]})
    try:
        erasure.numbers(phone)
    except erasure.InvalidPhone as exc:
        raise ApiError(400, "invalid body", errors={"phone": [str(exc)]}) from None
    with reading() as conn:
        record = erasure.request(conn)
    try:
        send(
            current_app.extensions[EXTENSION],
            ERASE,
            {"erasure": record["id"], "phone": phone},
            task_id=uuid.uuid4().hex,
            summary=f"[erasure {record['id']}]",  # what logs and Flower show: not the number
        )
    except QueueUnavailable:
        with reading() as conn:
            erasure.forget_request(conn, record["id"])
        retry = str(current_app.config["RETRY_AFTER_SECONDS"])
        raise ApiError(503, "queue unavailable", {"Retry-After": retry}) from None
    response = jsonify(shown(record))
    response.status_code = 202
    response.headers["Location"] = url_for("erasures.show_erasure", erasure_id=record["id"])
    return response


@bp.get("/erasures/<int:erasure_id>")
def show_erasure(erasure_id: int) -> Response:
    """An erasure: pending, or done with how many rows it removed and anonymised."""
    require_api_token()
    record = None
    if erasure_id <= MAX_ROW_ID:
        with reading() as conn:
            record = erasure.fetch(conn, erasure_id)
    if record is None:
        raise ApiError(404, "no such erasure")
    return jsonify(shown(record))


@click.command("erase")
@click.option("--phone", required=True, help="The number, with country code (any format).")
@with_appcontext
def erase_cli(phone: str) -> None:
    """Erase everything Ticks keeps about one phone number, now, and print what was done."""
    try:
        erasure.numbers(phone)
    except erasure.InvalidPhone as exc:
        raise click.BadParameter(str(exc), param_hint="--phone") from None
    with psycopg.connect(current_app.config["DATABASE_URL"]) as conn:
        record = erasure.erase(conn, phone)
    click.echo(json.dumps(shown(record), indent=2))
