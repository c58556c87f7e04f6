"""GET /instances: each sending number (instance) with what its provider last reported of its
connection, and when it last had a status; GET /insights: each instance's delivery funnel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg
from flask import Blueprint, Response, current_app, jsonify, request
from flask.cli import with_appcontext
from marshmallow import ValidationError

from app.auth import require_api_token
from app.database import database, reading
from app.errors import ApiError
from app.messages import to_json
from schemas.api import InsightsQuerySchema
from schemas.registry import REGISTRY
from workers.core import insights, store

bp = Blueprint("instances", __name__)


def instance_document(row: dict[str, Any], funnel: dict[str, Any] | None) -> dict[str, Any]:
    """One instance: its health (workers/core/numbers.py; ``since`` when it entered it, null
    before a worker first judged it), ``reported`` (null when its provider never reported its
    connection: Ticks has seen only its statuses; ``since`` there is when it entered that
    state), and ``last_hour``: its funnel over the messages sent in the last hour."""
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
            "health": row["health"],
            "since": row["health_since"],
            "health_reason": row["health_reason"],
            "health_figures": row["health_figures"],
            "reported": reported,
            "last_status_at": row["last_status_at"],
            "last_hour": funnel,
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
        found = overview(conn, provider)
    return jsonify(instances=[instance_document(row, funnel) for row, funnel in found])


def overview(
    conn: psycopg.Connection, provider: str | None = None
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each instance with its funnel over the last hour's messages (GET /instances, the
    status page, `flask --app app insights`)."""
    now = datetime.now(UTC)
    until = minute(now + timedelta(minutes=1))
    rows = store.fetch_instances(conn, provider)
    hour = insights.fetch(
        conn,
        since=until - timedelta(hours=1),
        until=until,
        now=now,
        stuck_after=timedelta(seconds=current_app.config["STUCK_AFTER_SECONDS"]),
        provider=provider,
    )
    funnels = {(e["provider"], e["instance_id"]): e for e in hour}
    return [(row, funnels.get((row["provider"], row["instance_id"]))) for row in rows]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def funnel_cells(funnel: dict[str, Any] | None) -> dict[str, str]:
    """A last hour's funnel as a table shows it (the command's, the status page's)."""
    f = funnel or {}
    ratios = f.get("ratios") or {}
    p50 = (f.get("time_to_deliver") or {}).get("p50")
    return {
        "sent": str(f.get("sent", 0)),
        "delivered": percent(ratios.get("delivered")),
        "read": percent(ratios.get("read")),
        "failed": percent(ratios.get("failed")),
        "stuck": str(f.get("stuck", 0)),
        "p50": "-" if p50 is None else f"{p50:g}",
    }


@click.command("insights")
@with_appcontext
@click.option("--provider", type=click.Choice(list(REGISTRY)), help="Only this provider's.")
def insights_command(provider: str | None) -> None:
    """Each sending number's health and its funnel over the last hour's messages."""
    with database() as conn:
        found = overview(conn, provider)
    header = (
        "provider",
        "instance",
        "health",
        "since",
        "sent",
        "delivered",
        "read",
        "failed",
        "stuck",
        "deliver p50 s",
        "reason",
    )
    lines = [header]
    for row, funnel in found:
        cells = funnel_cells(funnel)
        since = row["health_since"]
        lines.append(
            (
                row["provider"],
                row["instance_id"],
                row["health"] or "-",
                since.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if since else "-",
                *(cells[name] for name in ("sent", "delivered", "read", "failed", "stuck", "p50")),
                row["health_reason"] or "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*padded, line[-1]]).rstrip())


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
