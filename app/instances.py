"""GET /instances: each sending number (instance) with what its provider last reported of its
connection, and when it last had a status; GET /insights: each instance's delivery funnel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from app.auth import require_api_token
from app.database import reading
from app.errors import ApiError
from app.messages import to_json
from schemas.api import InsightsQuerySchema
from schemas.registry import REGISTRY
from workers.core import insights, store

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


# The longest window a request may cover, by bucket (entries per instance stay a few hundred).
LONGEST = {None: timedelta(days=400), "day": timedelta(days=400), "hour": timedelta(days=31)}
INSIGHTS_QUERY = InsightsQuerySchema()


def minute(value: datetime) -> datetime:
    """A time taken to the minute, the counts' resolution."""
    return value.astimezone(UTC).replace(second=0, microsecond=0)


@bp.get("/insights")
def insights_endpoint() -> Response:
    """Each instance's funnel over the messages sent in [since, until) (minutes; by default
    the last 24 hours), whole or by hour or day (``bucket``)."""
    require_api_token()
    try:
        query: dict[str, Any] = INSIGHTS_QUERY.load(request.args)
    except ValidationError as err:
        raise ApiError(400, "invalid query", errors=err.messages) from None
    now = datetime.now(UTC)
    until = minute(query.get("until", now + timedelta(minutes=1)))
    since = minute(query.get("since", until - timedelta(days=1)))
    bucket = query.get("bucket")
    if since >= until:
        raise ApiError(400, "invalid query", errors={"since": ["must be before until"]})
    if until - since > LONGEST[bucket]:
        days = LONGEST[bucket].days
        raise ApiError(
            400, "invalid query", errors={"since": [f"at most {days} days before until"]}
        )
    with reading() as conn:
        entries = insights.fetch(
            conn,
            since=since,
            until=until,
            now=now,
            stuck_after=timedelta(seconds=current_app.config["STUCK_AFTER_SECONDS"]),
            provider=query.get("provider"),
            instance_id=query.get("instance_id"),
            bucket=bucket,
        )
    return jsonify(insights=[to_json(entry) for entry in entries])
