"""The task message Celery's send_task would publish, built by the publishers themselves (the
web's group commit, the ledger's republishing of a lost message)."""

from __future__ import annotations

from typing import Any

from celery import Celery


def create_task_message(
    celery: Celery, task_name: str, payload: Any, task_id: str, summary: str
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Return the headers, properties and body Celery's send_task would publish."""
    headers, properties, body, _ = celery.amqp.create_task_message(
        task_id,
        task_name,
        [payload],
        {},
        # argsrepr is what Flower and the logs show: a summary, never phone numbers.
        argsrepr=summary,
        kwargsrepr="{}",
    )
    return headers, properties, body
