"""The status page at GET /: what Ticks did in the last hour and day, read-only, for a person.

Server-rendered (Jinja, inline SVG for the chart, one static stylesheet): no script, no build
step. Behind API_TOKEN, given as a Bearer token or as the password of HTTP basic auth, so a
browser asks for it. When PostgreSQL or the broker does not answer, the page still renders
and says so: it is most wanted during an incident.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Blueprint, Response, current_app, make_response, render_template

from app.auth import require_person
from app.database import pool
from app.instances import funnel_cells
from app.instances import overview as instances_overview
from app.queue import queue_snapshot
from schemas.registry import PROVIDERS, REGISTRY
from schemas.statuses import STATUSES
from workers.brokers.broker import QueueSnapshot
from workers.core import insights, store
from workers.core.redact import mask_message_id, mask_numbers, mask_phone
from workers.outbound import subscriptions
from workers.outbound.post import shown_url

log = logging.getLogger(__name__)

bp = Blueprint("status_page", __name__)

MINUTES = 60  # the chart's span
FAILURES_SHOWN = 20
REFRESH_SECONDS = 30
CACHE = "ticks.status_page"  # app.extensions key: the overview last read, with its time
CACHE_SETTING = "STATUS_PAGE_CACHE_SECONDS"
QUERY_TIMEOUT_MS = 15_000  # a page that cannot count in this long says so
# A queue whose oldest message has waited this long is falling behind.
QUEUE_AGE_WARNING_SECONDS = 60

# The page needs no script and loads nothing from elsewhere; nobody may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# The chart, in SVG user units: the bars are drawn between CHART_TOP and CHART_HEIGHT -
# CHART_BOTTOM (room for the time labels), right of CHART_LEFT (room for the scale).
CHART_WIDTH, CHART_HEIGHT, CHART_TOP, CHART_LEFT, CHART_BOTTOM = 720, 190, 10, 44, 22
MIN_BAR = 2.0


@dataclass(frozen=True)
class Bar:
    """One minute of the chart."""

    x: float
    width: float
    y: float
    height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ticks: list[tuple[float, int]]  # (y, value) of the horizontal grid lines
    labels: list[tuple[float, str]]  # (x, time) under the bars
    total: int
    failed: int
    span_minutes: float  # how long the bars cover: 59 whole minutes and the running one


def nice_ceiling(value: int) -> int:
    """Round up to a round number (1, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten, at
    least 1): the chart's top, so its busiest bar fills most of the height."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * power:
            return math.ceil(step * power)
    return 10 * power  # pragma: no cover - the loop always returns


def throughput_chart(rows: list[dict[str, Any]], now: datetime, minutes: int = MINUTES) -> Chart:
    """Lay out events recorded per minute, the last ``minutes`` minutes up to ``now``'s."""
    current = now.replace(second=0, microsecond=0)
    by_minute = {row["minute"]: row for row in rows}
    slots = [current - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    counts = [
        (by_minute[m]["events"], by_minute[m]["failed"]) if m in by_minute else (0, 0)
        for m in slots
    ]
    top = nice_ceiling(max((events for events, _ in counts), default=0))
    plot_width = CHART_WIDTH - CHART_LEFT
    plot_height = CHART_HEIGHT - CHART_BOTTOM - CHART_TOP
    base = CHART_TOP + plot_height
    slot = plot_width / minutes
    bars = []
    for i, (minute, (events, failed)) in enumerate(zip(slots, counts, strict=True)):
        # A minute with any event or failure stays visible beside the busiest.
        height = max(plot_height * events / top, MIN_BAR if events else 0)
        failed_height = max(plot_height * failed / top, MIN_BAR if failed else 0)
        bars.append(
            Bar(
                x=round(CHART_LEFT + i * slot + 1, 2),
                width=round(slot - 2, 2),
                y=round(base - height, 2),
                height=round(height, 2),
                failed_y=round(base - failed_height, 2),
                failed_height=round(failed_height, 2),
                title=f"{minute:%H:%M} UTC: {events} events, {failed} failed",
            )
        )
    values = [0, top // 2, top] if top % 2 == 0 else [0, top]
    ticks = [(round(base - plot_height * v / top, 2), v) for v in values]
    labels = [
        (round(CHART_LEFT + i * slot + slot / 2, 2), f"{slots[i]:%H:%M}")
        for i in (0, minutes // 2, minutes - 1)
    ]
    return Chart(
        bars=bars,
        ticks=ticks,
        labels=labels,
        total=sum(events for events, _ in counts),
        failed=sum(failed for _, failed in counts),
        span_minutes=minutes - 1 + (now - current).total_seconds() / 60,
    )


def count_table(
    counts: dict[tuple[str, str], dict[str, int]], window: str, shown: Iterable[str] = PROVIDERS
) -> dict[str, Any]:
    """Rows of provider x status for one window ("hour" or "day"), with a totals row: a row
    for each provider ``shown`` (those configured), and for any other with events."""
    listed = list(shown)
    providers = listed + [
        p for p in PROVIDERS if p not in listed and any(k[0] == p for k in counts)
    ]
    providers += sorted({p for p, _ in counts} - set(providers))
    cells = {
        provider: [counts.get((provider, status), {}).get(window, 0) for status in STATUSES]
        for provider in providers
    }
    totals = [sum(row[i] for row in cells.values()) for i in range(len(STATUSES))]
    rows = [{"provider": provider, "cells": row} for provider, row in cells.items()]
    return {"rows": rows, "totals": totals}


def duration(seconds: float) -> str:
    """A person's reading of a number of seconds: '0 s', '42 s', '3 min 5 s', '2 h 10 min'."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


# Each instance's small chart: its delivered and read ratios per hour over the last day.
SPARK_WIDTH, SPARK_HEIGHT, SPARK_HOURS = 120, 24, 24


def instances_by_hour(conn: psycopg.Connection, now: datetime) -> list[dict[str, Any]]:
    until = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return insights.fetch(
        conn,
        since=until - timedelta(hours=SPARK_HOURS),
        until=until,
        now=now,
        stuck_after=timedelta(seconds=current_app.config["STUCK_AFTER_SECONDS"]),
        bucket="hour",
    )


def sparklines(hours: list[dict[str, Any]], now: datetime) -> dict[tuple[str, str], dict[str, str]]:
    """Per instance, SVG polyline points of its delivered and read ratios per hour (the hours
    with messages sent), oldest left."""
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=SPARK_HOURS - 1
    )
    step = SPARK_WIDTH / (SPARK_HOURS - 1)
    lines: dict[tuple[str, str], dict[str, list[str]]] = {}
    for entry in sorted(hours, key=lambda e: e["since"]):
        if not entry["sent"]:
            continue
        key = (entry["provider"], entry["instance_id"] or "")
        x = round((entry["since"] - start).total_seconds() / 3600 * step, 1)
        for name in ("delivered", "read"):
            y = round(SPARK_HEIGHT - 2 - (SPARK_HEIGHT - 4) * (entry["ratios"][name] or 0), 1)
            lines.setdefault(key, {"delivered": [], "read": []})[name].append(f"{x},{y}")
    shown = {}
    for key, named in lines.items():
        shown[key] = {name: " ".join(widen(points)) for name, points in named.items()}
    return shown


def widen(points: list[str]) -> list[str]:
    """A line of one point is drawn as a short dash, so it shows."""
    if len(points) != 1:
        return points
    x, y = (float(v) for v in points[0].split(","))
    return [f"{max(0.0, x - 4):g},{y:g}", points[0]]


def read_database() -> tuple[dict[str, Any] | None, str | None]:
    """Return (overview, None), or (None, why) when PostgreSQL does not answer.

    An overview is reused for STATUS_PAGE_CACHE_SECONDS by this process: its counts scan the
    day's events (about 0.35 s for 1.5 million in `make bench`), and every open page refreshes,
    so many viewers cost the database one read per interval, not one each.
    """
    cache = current_app.extensions.setdefault(CACHE, {})
    kept = cache.get("overview")
    if kept is not None and time.monotonic() - kept[0] < current_app.config[CACHE_SETTING]:
        return kept[1], None
    try:
        with pool().connection() as conn:
            overview = store.fetch_overview(
                conn,
                minutes=MINUTES,
                failures=FAILURES_SHOWN,
                timeout_ms=QUERY_TIMEOUT_MS,
                more={"subscriptions": subscriptions.OVERVIEW},
            )
            overview["instances"] = instances_overview(conn)
            overview["instance_hours"] = instances_by_hour(conn, overview["now"])
    except psycopg.errors.QueryCanceled:
        log.warning("status page: the counts took over %d ms", QUERY_TIMEOUT_MS)
        return None, f"too slow to answer (over {QUERY_TIMEOUT_MS / 1000:g} s)"
    except psycopg.Error as exc:
        log.warning("status page: database unavailable: %s", type(exc).__name__)
        return None, "did not answer"
    cache["overview"] = (time.monotonic(), overview)
    return overview, None


def page_context() -> dict[str, Any]:
    """Everything the template shows."""
    overview, database_error = read_database()
    queue: QueueSnapshot | None = queue_snapshot()
    context: dict[str, Any] = {
        "database_error": database_error,
        "queue": queue,
        "queue_age": duration(queue.oldest_age) if queue and queue.oldest_age is not None else None,
        "queue_behind": bool(
            queue and queue.oldest_age is not None and queue.oldest_age >= QUEUE_AGE_WARNING_SECONDS
        ),
        "statuses": STATUSES,
        "refresh": REFRESH_SECONDS,
        "minutes": MINUTES,
        "chart_size": (CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM),
        "now": datetime.now(UTC),
    }
    if overview is not None:
        now = overview["now"].astimezone(UTC)  # the database's clock, for counts and chart alike
        secrets = current_app.config["PROVIDER_SECRETS"]
        configured = [name for name, record in REGISTRY.items() if record.configured(secrets)]
        context.update(
            now=now,
            overview=overview,
            hour=count_table(overview["counts"], "hour", configured),
            day=count_table(overview["counts"], "day", configured),
            chart=throughput_chart(overview["per_minute"], now),
            subscriptions=[
                {
                    **row,
                    "receiver": shown_url(row["url"]),
                    "filters": ", ".join((row["providers"] or []) + (row["statuses"] or []))
                    or "all",
                    "health": subscriptions.state(row),
                    "error": subscriptions.failing_because(row),
                    "behind": duration((now - row["oldest_pending"]).total_seconds())
                    if row["oldest_pending"]
                    else None,
                }
                for row in overview["subscriptions"]
            ],
            numbers=number_rows(overview, now),
            spark_size=(SPARK_WIDTH, SPARK_HEIGHT),
            failed=[
                {
                    **row,
                    "phone": mask_phone(row["phone"]),
                    "message_id": mask_message_id(row["message_id"]),
                }
                for row in overview["failed"]
            ],
        )
    return context


def number_rows(overview: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The sending numbers' table: health, the last hour's funnel, the day's small chart."""
    lines = sparklines(overview["instance_hours"], now)
    rows = []
    for row, funnel in overview["instances"]:
        cells = funnel_cells(funnel)
        rows.append(
            {
                "provider": row["provider"],
                "instance_id": mask_numbers(row["instance_id"]),
                "health": row["health"] or "-",
                "since": row["health_since"],
                "reason": row["health_reason"],
                "reported": row["state"],
                **cells,
                "p50": cells["p50"] if cells["p50"] == "-" else f"{cells['p50']} s",
                "lines": lines.get((row["provider"], row["instance_id"])),
            }
        )
    return rows


@bp.app_template_filter("utc")
def utc(value: datetime | None) -> str:
    """A timestamp as UTC, to the second."""
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@bp.get("/")
def status_page() -> Response:
    """The status page."""
    require_person()
    response = make_response(render_template("status.html", **page_context()))
    response.headers.update(SECURITY_HEADERS)
    return response
