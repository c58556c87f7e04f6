"""Reference: Ticks' Celery settings with a task that does nothing: the drain ceiling."""

from workers.celery_app import app

NOOP = "bench.noop"


@app.task(name=NOOP)
def noop(payload: object) -> None:
    """Do nothing with a message, so only Celery's own cost per message remains."""


__all__ = ["app"]
