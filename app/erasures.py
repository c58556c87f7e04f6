"""Erasure of a person's data by phone number: ``POST /erasures`` behind API_TOKEN, and
``flask --app app erase --phone <number>`` (workers/erasure.py does it)."""

from __future__ import annotations

import json
from typing import Any

import click
import psycopg
from flask import Blueprint, Response, current_app, jsonify, request
from flask.cli import with_appcontext

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from workers.erasure import InvalidPhone, erase, numbers

bp = Blueprint("erasures", __name__)


def shown(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "erased_at": record["erased_at"].isoformat()}


@bp.post("/erasures")
def create_erasure() -> Response:
    """Erase everything Ticks keeps about one phone number; answer what was done."""
    require_api_token()
    body = request.get_json(silent=True)
    phone = body.get("phone") if isinstance(body, dict) else None
    if not isinstance(phone, str):
        raise ApiError(400, "invalid body", errors={"phone": ["a phone number is required"]})
    try:
        numbers(phone)
    except InvalidPhone as exc:
        raise ApiError(400, "invalid body", errors={"phone": [str(exc)]}) from None
    with reading() as conn:  # an unavailable database: 503, nothing erased
        record = erase(conn, phone)
    response = jsonify(shown(record))
    response.status_code = 201
    return response


@click.command("erase")
@click.option("--phone", required=True, help="The number, with country code (any format).")
@with_appcontext
def erase_cli(phone: str) -> None:
    """Erase everything Ticks keeps about one phone number, and print what was done."""
    try:
        with psycopg.connect(current_app.config["DATABASE_URL"]) as conn:
            record = erase(conn, phone)
    except InvalidPhone as exc:
        raise click.BadParameter(str(exc), param_hint="--phone") from None
    click.echo(json.dumps(shown(record), indent=2))
