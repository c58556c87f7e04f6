"""The Celery application: broker settings shared by the web (publisher) and the workers."""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery, signals

from workers import metrics
from workers.brokers import broker
from workers.core import logs
from workers.core.settings import (  # noqa: F401  (theirs to import from here too)
    DEFAULT_REDIS_URL,
    DELIVERY_QUEUE,
    QUEUE,
    RETRY_BACKOFF_MAX,
    SWEEP_INTERVAL,
    SWEEP_MIN_AGE,
    VISIBILITY_TIMEOUT,
)

APPLY_EVENTS = "ticks.apply_events"
QUARANTINE = "ticks.quarantine"
ERASE = "ticks.erase"
RECORD_CONNECTIONS = "ticks.record_connections"
DELIVER = "ticks.deliver"
# Outbound webhooks go through a queue and a worker of their own (DELIVERY_QUEUE,
# workers/outbound/deliveries.py): a slow receiver never holds up the status worker.


def make_celery(broker_url: str, **transport_options: Any) -> Celery:
    """Create a Celery app for ``broker_url`` (Redis or RabbitMQ, workers/brokers/broker.py); JSON
    only, late acks, no result backend."""
    app = Celery("ticks", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=QUEUE,
        # A message is acknowledged only after its events are committed; a worker killed
        # mid-task leaves it unacknowledged, and reject_on_worker_lost requeues it.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raised is acknowledged, not requeued: a dead-lettered task raises once
        # its dead letter is committed (workers/guarded.py), and must end there, not loop.
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=4,
        # With late acks a task cut off by a lost broker connection must not be acked
        # later on a new connection; cancelling it lets the broker redeliver it.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        # A worker must outlive any broker outage: retry the connection forever, not 100 times.
        broker_connection_max_retries=None,
        # Flower and `celery events` follow tasks through these events.
        worker_send_task_events=True,
        task_routes={DELIVER: {"queue": DELIVERY_QUEUE}},
    )
    options = {**transport_options, **extra_transport_options()}
    broker.for_url(broker_url).configure(app, VISIBILITY_TIMEOUT, **options)
    return app


def extra_transport_options() -> dict[str, Any]:
    """kombu transport options from BROKER_TRANSPORT_OPTIONS (a JSON object), e.g. Redis
    Sentinel's {"master_name": "mymaster"}."""
    raw = os.environ.get("BROKER_TRANSPORT_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise RuntimeError(f"BROKER_TRANSPORT_OPTIONS must be a JSON object, not {raw!r}")
    return options


@signals.worker_process_init.connect
def open_pool(**kwargs: Any) -> None:
    """Open the database pool in each worker process, after the fork; create its metrics
    too, so the first task does not pay for them."""
    from workers.core.db import get_pool

    get_pool()
    metrics.metrics()


@signals.worker_process_shutdown.connect
def shut_pool(**kwargs: Any) -> None:
    """Close the pool when a worker process exits."""
    from workers.core.db import close_pool

    close_pool()


@signals.celeryd_init.connect
def worker_metrics_dir(**kwargs: Any) -> None:
    """Before the pool starts and before any metric exists (workers/metrics.py)."""
    metrics.use_multiprocess_dir()


@signals.worker_ready.connect
def serve_worker_metrics(**kwargs: Any) -> None:
    """The main process serves the pool's metrics; and says if the broker may lose messages.

    Its own metrics (housekeeping's; every task's under the threads or solo pool) are created
    now, with their known series at 0, rather than on first use."""
    metrics.metrics()
    metrics.serve()
    BROKER.check_server(app)


@signals.worker_process_shutdown.connect
def forget_pool_process(pid: int | None = None, **kwargs: Any) -> None:
    metrics.forget_process(pid or os.getpid())


@signals.worker_shutdown.connect
def remove_metrics_dir(**kwargs: Any) -> None:
    metrics.remove_own_dir()


@signals.setup_logging.connect
def setup_logging(loglevel: int | str | None = None, **kwargs: Any) -> None:
    """Workers log like the web: JSON lines on stdout, each with its task's id and name."""
    logs.configure(loglevel or "INFO", task_fields=True)


BROKER = broker.current()
app = make_celery(broker.broker_url())
app.conf.include = ["workers.tasks", "workers.outbound.deliveries"]
if BROKER.name == "redis":
    # Keeps the messages it holds when the Redis connection drops, and hands them back once
    # it is back (workers/brokers/recovery.py). RabbitMQ requeues them itself.
    app.conf.worker_consumer = "workers.brokers.recovery:Consumer"
