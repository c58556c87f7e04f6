"""The Celery application: broker settings shared by the web (publisher) and the workers."""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery, signals

from workers import broker, logs, metrics

APPLY_EVENTS = "ticks.apply_events"
QUARANTINE = "ticks.quarantine"
ERASE = "ticks.erase"
DELIVER = "ticks.deliver"
QUEUE = broker.QUEUE
# Outbound webhooks go through a queue and a worker of their own (workers/deliveries.py): a
# slow receiver never holds up the status worker.
DELIVERY_QUEUE = broker.DELIVERY_QUEUE
DEFAULT_REDIS_URL = broker.DEFAULT_REDIS_URL
# Redis redelivers a message not acknowledged within this many seconds: how long the
# messages of a worker killed outright wait before redelivery. A task waiting out a database
# outage holds its message unacknowledged, sleeping up to RETRY_BACKOFF_MAX between attempts,
# and hands it back after half this timeout; a longer backoff would overshoot that.
VISIBILITY_TIMEOUT = int(os.environ.get("TICKS_VISIBILITY_TIMEOUT", "3600"))
RETRY_BACKOFF_MAX = int(os.environ.get("TICKS_RETRY_BACKOFF_MAX", "300"))
# The in-flight ledger's sweeper (workers/ledger.py): how often, and how old an unfinished
# message must be before it counts as lost if no worker holds it.
SWEEP_INTERVAL = float(os.environ.get("TICKS_SWEEP_INTERVAL", "60"))
SWEEP_MIN_AGE = float(os.environ.get("TICKS_SWEEP_MIN_AGE", "120"))
if RETRY_BACKOFF_MAX * 2 > VISIBILITY_TIMEOUT:
    raise RuntimeError(
        f"TICKS_RETRY_BACKOFF_MAX ({RETRY_BACKOFF_MAX}) must be at most half of "
        f"TICKS_VISIBILITY_TIMEOUT ({VISIBILITY_TIMEOUT}), or Redis redelivers messages "
        "that a worker still holds through a database outage."
    )


def make_celery(broker_url: str, **transport_options: Any) -> Celery:
    """Create a Celery app for ``broker_url`` (Redis or RabbitMQ, workers/broker.py); JSON
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
    from workers.db import get_pool

    get_pool()
    metrics.metrics()


@signals.worker_process_shutdown.connect
def shut_pool(**kwargs: Any) -> None:
    """Close the pool when a worker process exits."""
    from workers.db import close_pool

    close_pool()


@signals.worker_shutting_down.connect
def note_shutdown(**kwargs: Any) -> None:
    """Wake any task waiting out an outage, so it hands its message back at once."""
    from workers.guarded import SHUTTING_DOWN

    SHUTTING_DOWN.set()


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
app.conf.include = ["workers.tasks", "workers.deliveries"]
if BROKER.name == "redis":
    # Keeps the messages it holds when the Redis connection drops, and hands them back once
    # it is back (workers/recovery.py). RabbitMQ requeues them itself.
    app.conf.worker_consumer = "workers.recovery:Consumer"
