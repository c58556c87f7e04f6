"""GET /instances: each sending number (instance) with what its provider last reported of its
connection, and when it last had a status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from app.messages import to_json
from schemas.registry import REGISTRY
from workers.core import store

bp = Blueprint("instances", __name__)


def instance_document(row: dict[str, Any]) -> dict[str, Any]:
    """One instance: ``reported`` is null when its provider never reported its connection
    (Ticks has seen only its statuses), and ``since`` is when it entered that state."""
    reported = None
    if row["state"] is not None:
        reported = {
            "state": row["state"],
            "raw_state": row["raw_state"],
            "reason": row["reason"],
            "at": row["reported_at"],
            "since": row["since"],
        }
    return to_json(
        {
            "provider": row["provider"],
            "instance_id": row["instance_id"],
            "reported": reported,
            "last_status_at": row["last_status_at"],
        }
    )


@bp.get("/instances")
def instances() -> Response:
    """Every instance with a reported connection state or a status applied."""
    require_api_token()
    provider = request.args.get("provider")
    if provider is not None and provider not in REGISTRY:
        raise ApiError(400, "invalid query", errors={"provider": [f"one of {', '.join(REGISTRY)}"]})
    with reading() as conn:
        rows = store.fetch_instances(conn, provider)
    return jsonify(instances=[instance_document(row) for row in rows])
