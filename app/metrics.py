"""Prometheus metrics of the web process, at GET /metrics (behind API_TOKEN).

Under gunicorn every worker process writes its samples to PROMETHEUS_MULTIPROC_DIR (set by
app/gunicorn_conf.py, before create_app creates the metrics) and /metrics adds them all up,
whichever process answers. Without that variable (tests, `flask run`) the process's own
registry is used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import psycopg
from celery import Celery
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from app.auth import require_api_token
from app.config import CELERY_EXTENSION
from schemas.registry import PROVIDERS
from schemas.statuses import HEALTHS
from workers.brokers import broker
from workers.core.db import get_pool
from workers.lifecycle import housekeeping
from workers.metrics import match_environment
from workers.outbound import subscriptions

bp = Blueprint("metrics", __name__)
SNAPSHOT_TIMEOUT = 0.5  # seconds: a broker that does not answer a scrape is reported down


class WebMetrics:
    """The web's counters and histograms, created by the first create_app() of a process.

    Not at import: a server's config may import this package before it sets
    PROMETHEUS_MULTIPROC_DIR (gunicorn's ``--config python:app.gunicorn_conf`` does), and a
    metric created then would count in this process's memory, which no other process's
    /metrics answer sees.
    """

    def __init__(self) -> None:
        self.callbacks = Counter(
            "ticks_callbacks",
            "Webhook callbacks received, by provider and outcome (reason: why a rejection)",
            ["provider", "outcome", "reason"],
        )
        self.events_enqueued = Counter(
            "ticks_events_enqueued", "Status events enqueued for the workers", ["provider"]
        )
        self.request_seconds = Histogram(
            "ticks_http_request_duration_seconds",
            "Time to answer a request, by route pattern (never the path: it may hold a token)",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.enqueue_seconds = Histogram(
            "ticks_enqueue_duration_seconds",
            "Time from handing a callback's events to the publisher to their being on the queue",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
        )
        self.batch_callbacks = Histogram(
            "ticks_publish_batch_callbacks",
            "Callbacks per task message (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        # Every series whose labels are known, at 0: a dashboard shows 0 rather than "no
        # data", and a rate() alert has a series before the first bad callback.
        for provider in PROVIDERS:
            self.events_enqueued.labels(provider)
            for outcome in OUTCOMES:
                self.callbacks.labels(provider, outcome, "")
            for outcome, reason in {*REJECTIONS.values(), OTHER_REJECTION}:
                if reason != "unknown_provider":
                    self.callbacks.labels(provider, outcome, reason)
        self.callbacks.labels(UNKNOWN_PROVIDER, *REJECTIONS[404])


@cache
def web_metrics() -> WebMetrics:
    """This process's web metrics, created on first use (create_app creates them)."""
    match_environment()
    return WebMetrics()


# What a webhook error answer says about the callback, by status code.
REJECTIONS = {
    400: ("rejected", "invalid_json"),
    401: ("unauthorized", ""),
    404: ("rejected", "unknown_provider"),
    405: ("rejected", "method_not_allowed"),
    413: ("rejected", "too_large"),
    415: ("rejected", "unsupported_media_type"),
    503: ("broker_unavailable", ""),
}
OTHER_REJECTION = ("rejected", "other")
# What the endpoint notes of a callback it read (note_outcome), or of one it could not enqueue.
OUTCOMES = ("accepted", "ignored", "quarantined")
UNKNOWN_PROVIDER = "unknown"


def note_outcome(outcome: str, events: int = 0) -> None:
    """Record what the endpoint did with this request's callback (accepted, ignored, ...)."""
    g.callback_outcome = outcome
    g.callback_events = events


class QueueCollector:
    """The queue at scrape time: is Ticks keeping up?"""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = broker.for_url(self.celery.conf.broker_url).snapshot(
            self.celery, SNAPSHOT_TIMEOUT
        )
        up = GaugeMetricFamily("ticks_broker_up", "1 when the broker answered this scrape")
        up.add_metric([], 0 if snapshot is None else 1)
        yield up
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "ticks_queue_messages", "Task messages waiting on the queue", value=snapshot.waiting
        )
        # What the broker cannot tell (RabbitMQ over AMQP: the age, the unacknowledged; the
        # ledger exists on Redis only) is left out, not reported as 0.
        if snapshot.oldest_age is not None:
            yield GaugeMetricFamily(
                "ticks_queue_oldest_age_seconds",
                "Age of the oldest task message waiting (0 when none): growing means behind",
                value=snapshot.oldest_age,
            )
        if snapshot.unacked is not None:
            yield GaugeMetricFamily(
                "ticks_unacked_messages",
                "Task messages taken by workers, not yet finished",
                value=snapshot.unacked,
            )
        if snapshot.inflight is not None:
            yield GaugeMetricFamily(
                "ticks_inflight_messages",
                "Task messages published and not yet finished (the in-flight ledger)",
                value=snapshot.inflight,
            )


class DatabaseCollector:
    """Metrics read from the database at scrape time, within SNAPSHOT_TIMEOUT; none when it
    does not answer (the database's own absence shows on /healthz and the status page)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with get_pool(self.database_url).connection(timeout=SNAPSHOT_TIMEOUT) as conn:
                conn.execute(f"SET LOCAL statement_timeout = {int(SNAPSHOT_TIMEOUT * 1000)}")
                data = self.read(conn)
        except (psycopg.Error, PoolTimeout):
            return
        yield from self.families(data)

    def read(self, conn: psycopg.Connection) -> Any:
        raise NotImplementedError

    def families(self, data: Any) -> Iterator[GaugeMetricFamily]:
        raise NotImplementedError


class SubscriptionCollector(DatabaseCollector):
    """Outbound webhooks at scrape time, per subscription: what waits, for how long, what was
    given up on, and whether its circuit is open (from the database)."""

    def read(self, conn: psycopg.Connection) -> Any:
        return subscriptions.overview(conn), conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    def families(self, data: Any) -> Iterator[GaugeMetricFamily]:
        rows, now = data
        families = {
            "backlog": GaugeMetricFamily(
                "ticks_delivery_backlog",
                "Changes waiting to be delivered, per subscription",
                labels=["subscription"],
            ),
            "oldest": GaugeMetricFamily(
                "ticks_delivery_oldest_age_seconds",
                "Age of the oldest change waiting to be delivered (0 when none)",
                labels=["subscription"],
            ),
            "dead": GaugeMetricFamily(
                "ticks_delivery_dead",
                "Deliveries given up on (dead letters, replayable), per subscription",
                labels=["subscription"],
            ),
            "paused": GaugeMetricFamily(
                "ticks_delivery_circuit_open",
                "1 while a subscription's circuit is open (its receiver kept failing)",
                labels=["subscription"],
            ),
        }
        for row in rows:
            label = [row["id"]]
            oldest = row["oldest_pending"]
            families["backlog"].add_metric(label, row["backlog"])
            families["oldest"].add_metric(label, (now - oldest).total_seconds() if oldest else 0)
            families["dead"].add_metric(label, row["dead"])
            families["paused"].add_metric(label, 1 if row["paused"] else 0)
        yield from families.values()


OLDEST_KEPT = """
SELECT now() AS now,
       (SELECT created_at FROM messages ORDER BY created_at, provider, message_id LIMIT 1)
           AS messages,
       (SELECT min(received_at) FROM quarantine) AS quarantine,
       (SELECT created_at FROM dead_letters ORDER BY id LIMIT 1) AS dead_letters,
       (SELECT created_at FROM changes ORDER BY id LIMIT 1) AS changes,
       (SELECT created_at FROM deliveries ORDER BY id LIMIT 1) AS deliveries,
       (SELECT created_at FROM instance_events ORDER BY id LIMIT 1) AS instance_events
"""


class RetentionCollector(DatabaseCollector):
    """What housekeeping (workers/lifecycle/housekeeping.py) keeps, at scrape time: the age of
    the oldest row of each table (the history's: its oldest day), and how many days ahead the
    history has partitions for (none for a day means its events cannot be recorded)."""

    def read(self, conn: psycopg.Connection) -> Any:
        with conn.cursor(row_factory=dict_row) as cur:
            oldest = cur.execute(OLDEST_KEPT).fetchone() or {}
        return oldest, [day for day, _name, _pending in housekeeping.partitions(conn)]

    def families(self, data: Any) -> Iterator[GaugeMetricFamily]:
        oldest, days = data
        now = oldest.pop("now")
        if days:
            oldest["status_events"] = datetime.combine(days[0], datetime.min.time(), UTC)
        ages = GaugeMetricFamily(
            "ticks_retention_oldest_seconds",
            "Age of the oldest row kept, per table (status_events: the start of its oldest day)",
            labels=["table"],
        )
        for table, moment in oldest.items():
            if moment is not None:
                ages.add_metric([table], max(0.0, (now - moment).total_seconds()))
        yield ages
        ahead = GaugeMetricFamily(
            "ticks_history_partitions_ahead_seconds",
            "Time from now to the end of the history's last daily partition (housekeeping "
            "keeps PARTITION_DAYS_AHEAD days); under 86400, tomorrow's events would have "
            "nowhere to go; 0 with no partition at all",
        )
        end = (
            datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), UTC)
            if days
            else now
        )
        ahead.add_metric([], (end - now).total_seconds())
        yield ahead


INSTANCES_BY_HEALTH = "SELECT provider, health, count(*) FROM instance_health GROUP BY 1, 2"
STUCK_BY_PROVIDER = """
SELECT provider, coalesce(sum(count), 0)::bigint FROM insight_counts
WHERE metric = 'at_sent' AND minute >= %(since)s AND minute < %(before)s
GROUP BY provider
"""


class InstanceCollector(DatabaseCollector):
    """Number health at scrape time, with bounded labels only: instances per provider and
    health (every provider x health series present, 0 or not), and messages stuck at sent
    (sent over the last day, more than STUCK_AFTER ago) per provider. Each instance's figures
    stay in GET /instances and GET /insights (label cardinality)."""

    def __init__(self, database_url: str, stuck_after: float) -> None:
        super().__init__(database_url)
        self.stuck_after = stuck_after

    def read(self, conn: psycopg.Connection) -> Any:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        window = {
            "since": now - timedelta(days=1),
            "before": now - timedelta(seconds=self.stuck_after),
        }
        health = {(p, h): n for p, h, n in conn.execute(INSTANCES_BY_HEALTH)}
        stuck: dict[str, int] = {p: n for p, n in conn.execute(STUCK_BY_PROVIDER, window)}
        return health, stuck

    def families(self, data: Any) -> Iterator[GaugeMetricFamily]:
        health, stuck = data
        instances = GaugeMetricFamily(
            "ticks_instances",
            "Sending numbers (instances) per provider and health (docs/operations.md)",
            labels=["provider", "health"],
        )
        messages = GaugeMetricFamily(
            "ticks_stuck_messages",
            "Messages sent over the last day, more than STUCK_AFTER ago, still at sent",
            labels=["provider"],
        )
        for provider in PROVIDERS:
            for state in HEALTHS:
                instances.add_metric([provider, state], health.get((provider, state), 0))
            messages.add_metric([provider], stuck.get(provider, 0))
        yield instances
        yield messages


@bp.get("/metrics")
def metrics() -> Response:
    """Expose every metric in Prometheus' text format."""
    require_api_token()
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    queue = CollectorRegistry()
    queue.register(QueueCollector(current_app.extensions[CELERY_EXTENSION]))
    queue.register(SubscriptionCollector(current_app.config["DATABASE_URL"]))
    queue.register(RetentionCollector(current_app.config["DATABASE_URL"]))
    queue.register(
        InstanceCollector(
            current_app.config["DATABASE_URL"], current_app.config["STUCK_AFTER_SECONDS"]
        )
    )
    return Response(
        generate_latest(registry) + generate_latest(queue), mimetype=CONTENT_TYPE_LATEST
    )


def start_timer() -> None:
    g.metrics_started = time.perf_counter()


def observe(response: Response) -> Response:
    """Count the callback (webhook requests) and time the request (every request)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    measures = web_metrics()
    started = g.get("metrics_started")
    if started is not None:
        measures.request_seconds.labels(request.method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    if request.path.startswith("/webhooks/"):
        segment = request.path.split("/")[2]  # /webhooks/<provider>...
        provider = segment if segment in PROVIDERS else UNKNOWN_PROVIDER
        outcome = g.get("callback_outcome")
        if outcome is not None:
            measures.callbacks.labels(provider, outcome, "").inc()
            if outcome == "accepted":
                measures.events_enqueued.labels(provider).inc(g.get("callback_events", 0))
        else:
            outcome, reason = REJECTIONS.get(response.status_code, OTHER_REJECTION)
            measures.callbacks.labels(provider, outcome, reason).inc()
    return response


def init_metrics(app: Flask) -> None:
    """Time every request, count every callback, and serve /metrics."""
    web_metrics()
    app.before_request(start_timer)
    app.after_request(observe)
    app.register_blueprint(bp)
