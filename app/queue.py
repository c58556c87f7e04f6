"""Publish to the broker, and tell the caller at once when it cannot."""

from __future__ import annotations

import logging
import socket
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from flask import Flask, current_app

from workers import ledger
from workers.celery_app import make_celery

log = logging.getLogger(__name__)

EXTENSION = "ticks.celery"
# A dead or unreachable broker must be answered 503 within 2 s, so every wait is short:
# connect and socket timeouts of 0.5 s, and one retry of the publish.
PUBLISH_SOCKET_TIMEOUT = 0.5
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.RedisError,
    OSError,
    socket.timeout,
)


class QueueUnavailable(Exception):
    """The broker could not take the message; nothing was enqueued."""


def init_queue(app: Flask) -> Celery:
    """Attach a publishing Celery app for the configured broker."""
    celery = make_celery(
        app.config["REDIS_URL"],
        socket_connect_timeout=PUBLISH_SOCKET_TIMEOUT,
        socket_timeout=PUBLISH_SOCKET_TIMEOUT,
        # kombu's connection failover options: used when a channel (re)connects.
        max_retries=1,
        interval_start=0,
        interval_step=0.2,
        interval_max=0.2,
    )
    celery.conf.broker_connection_timeout = PUBLISH_SOCKET_TIMEOUT
    app.extensions[EXTENSION] = celery
    return celery


def enqueue(task_name: str, payload: Any, *, task_id: str, summary: str) -> None:
    """Publish one task message; raise QueueUnavailable if the broker did not take it."""
    celery: Celery = current_app.extensions[EXTENSION]
    try:
        # Recorded first: if the broker then loses the message, the sweeper publishes it again.
        with celery.pool.acquire(block=True, timeout=PUBLISH_SOCKET_TIMEOUT) as conn:
            ledger.record(conn.default_channel.client, task_id, task_name, payload)
        celery.send_task(
            task_name,
            args=[payload],
            task_id=task_id,
            # argsrepr is what Flower and the logs show: a summary, never phone numbers.
            argsrepr=summary,
            kwargsrepr="{}",
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except BROKER_ERRORS as exc:
        log.error("broker unavailable task=%s task_id=%s: %s", task_name, task_id, exc)
        raise QueueUnavailable(str(exc)) from exc


def ping_broker() -> None:
    """Raise if the broker does not answer a PING."""
    celery: Celery = current_app.extensions[EXTENSION]
    with celery.connection_for_write() as conn:
        conn.default_channel.client.ping()
