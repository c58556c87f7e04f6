"""Prometheus metrics of the workers, on a port of their own (WORKER_METRICS_PORT).

A prefork worker is a main process and its pool; every one of them writes its samples to
PROMETHEUS_MULTIPROC_DIR and the main process serves their sum. prometheus_client chooses
between one process and many when it is first imported, so metrics are created lazily: the
worker's main process sets the directory first (celeryd_init), before any metric exists.
The queue's depth and the age of its oldest message are on the web's /metrics (read from
Redis, the same for every worker).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from functools import cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

DEFAULT_PORT = 9808
OWN_DIR_FLAG = "TICKS_OWN_METRICS_DIR"
# Why a task attempt was repeated (workers/guarded.py).
RETRY_REASONS = ("database_unavailable", "error")


class WorkerMetrics:
    """The worker's counters and histograms."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.events = Counter(
            "ticks_events_applied",
            "Events the workers processed, by outcome: applied, duplicate (seen before), "
            "refused (the rules kept the status), receipt (a group participant's receipt of a "
            "status the message already had), pending (not sent yet: history only)",
            ["outcome"],
        )
        self.refused = Counter(
            "ticks_transitions_refused",
            "Events the rules refused, by the message's status and the event's",
            ["from_status", "to_status"],
        )
        self.failed = Counter(
            "ticks_failed_events", "failed events received from providers", ["provider"]
        )
        self.retries = Counter(
            "ticks_task_retries",
            "Task attempts repeated: database_unavailable (waited out) or error (poison)",
            ["reason"],
        )
        self.dead_letters = Counter("ticks_dead_letters", "Task messages put in dead_letters")
        self.batch_events = Histogram(
            "ticks_apply_batch_events",
            "Events applied per transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.deliveries = Counter(
            "ticks_deliveries",
            "Changes POSTed to subscriptions, by outcome: delivered (a 2xx), failed (to be "
            "retried), dead (given up on, waiting in the dead letters)",
            ["outcome"],
        )
        self.delivery_latency = Histogram(
            "ticks_delivery_latency_seconds",
            "From a change's commit to its receiver's 2xx (the oldest change of a batch)",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
        )
        self.retention_removed = Counter(
            "ticks_retention_removed",
            "Rows removed by retention (workers/lifecycle/housekeeping.py), by table; "
            "status_events_partitions counts the history's days dropped",
            ["table"],
        )
        self.apply_seconds = Histogram(
            "ticks_apply_duration_seconds",
            "Time to apply one batch of events in the database",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.initialise()

    def initialise(self) -> None:
        """Make every series whose labels are known in advance, at 0, so that dashboards and
        rate() alerts have a series before the first event of its kind (Prometheus' advice)."""
        from schemas.registry import PROVIDERS
        from schemas.statuses import STATUSES, next_status
        from workers.core.store import Outcome

        for applied in Outcome:
            self.events.labels(applied.value)
        for current in STATUSES:
            for incoming in STATUSES:
                if incoming != current and next_status(current, incoming) == current:
                    self.refused.labels(current, incoming)
        for provider in PROVIDERS:
            self.failed.labels(provider)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for outcome in ("delivered", "failed", "dead"):
            self.deliveries.labels(outcome)
        # ticks_retention_removed's tables: by housekeeping when it starts (it knows them).


@cache
def metrics() -> WorkerMetrics:
    """Return this process's metrics, created on first use."""
    match_environment()
    return WorkerMetrics()


def use_multiprocess_dir() -> None:
    """In the worker's main process, before any metric: give the pool a shared directory.

    WORKER_METRICS_DIR, or a fresh temporary one; never the web's PROMETHEUS_MULTIPROC_DIR,
    which the environment may carry: each would count the other's samples.
    """
    directory = os.environ.get("WORKER_METRICS_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
    else:
        directory = tempfile.mkdtemp(prefix="ticks-worker-metrics-")
        os.environ[OWN_DIR_FLAG] = "1"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    clear_multiprocess_dir(directory)


def web_metrics_dir() -> str | None:
    """In a web server's main process, before any metric: give every web process one
    directory for its samples (app/metrics.py sums them): PROMETHEUS_MULTIPROC_DIR, or a fresh
    temporary one, emptied of earlier runs' samples. Return it when it was made here, for the
    server to remove at exit."""
    own = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own = tempfile.mkdtemp(prefix="ticks-web-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    clear_multiprocess_dir(directory)
    return own


def clear_multiprocess_dir(directory: str) -> None:
    """Remove the samples of processes gone (a directory from an earlier run)."""
    for stale in os.scandir(directory):
        if stale.name.endswith(".db"):
            os.unlink(stale.path)


def match_environment() -> None:
    """Make prometheus_client's value store follow PROMETHEUS_MULTIPROC_DIR as it is now.

    prometheus_client picks between one process and many when it is first imported, from the
    environment at that moment, and whatever imported it first (the `celery` command through
    Flower's CLI plugin, a server's config importing the app's package) may have come before
    the directory was set. Called before a process creates its first metric (web and workers
    create them lazily), so their samples go where the process that serves /metrics reads.
    """
    from prometheus_client import values

    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if multiprocess != (values.ValueClass is not values.MutexValue):
        values.ValueClass = values.get_value_class()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: probes every few seconds would fill it."""


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve() -> Any:
    """Serve the sum of every pool process's metrics, and the worker's health check
    (/healthz, workers/health.py), on WORKER_METRICS_PORT (0: not at all)."""
    port = int(os.environ.get("WORKER_METRICS_PORT", DEFAULT_PORT))
    if not port:
        return None
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    from workers.health import health_app

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    address = os.environ.get("WORKER_METRICS_ADDRESS", "127.0.0.1")
    try:
        server = make_server(
            address,
            port,
            health_app(make_wsgi_app(registry)),
            ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
    except OSError as exc:  # another worker on this host has the port: it serves them too
        log.warning("worker metrics not served on %s:%d: %s", address, port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info(
        "worker metrics on http://%s:%d/metrics, health on /healthz (samples in %s)",
        address,
        port,
        os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    )
    return server


def forget_process(pid: int) -> None:
    """Drop the live gauges of a pool process that exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_own_dir() -> None:
    """Remove the directory the worker made for itself."""
    if os.environ.get(OWN_DIR_FLAG):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
