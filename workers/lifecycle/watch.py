"""The number-health watch: in each status worker's main process, a thread that judges every
instance's health every HEALTH_INTERVAL seconds (workers/core/numbers.py; one worker at a time,
by a lock), and logs each change."""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg

from workers.core import numbers
from workers.core.redact import mask_numbers
from workers.core.settings import HEALTH_INTERVAL, STUCK_AFTER
from workers.lifecycle.recurring import Recurring

log = logging.getLogger(__name__)


def watch_once(conninfo: str) -> list[numbers.Change]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        return numbers.evaluate(
            conn, now, timedelta(seconds=STUCK_AFTER), every=timedelta(seconds=HEALTH_INTERVAL)
        )


class Watch(Recurring):
    """In a worker that consumes the status queue: the health watch in a thread of its own."""

    thread_name = "ticks-watch"

    def prepare(self) -> None:
        from workers.core.db import database_url

        self.conninfo = database_url()

    def interval(self) -> float:
        return HEALTH_INTERVAL

    def round(self) -> None:
        try:
            changes = watch_once(self.conninfo)
        except Exception as exc:  # the next round tries again; the worker goes on
            log.warning("number health not judged (again in %g s): %s", HEALTH_INTERVAL, exc)
            return
        for change in changes:
            log.warning(
                "instance health provider=%s instance_id=%s %s -> %s: %s",
                change.provider,
                mask_numbers(change.instance_id),
                change.previous or "new",
                change.verdict.health,
                change.verdict.reason,  # Ticks' words and codes; no number (numbers.judge)
            )
