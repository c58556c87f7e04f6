"""Reference: Ticks' Celery settings with a task that does nothing: the drain ceiling.

It registers a no-op under Ticks' own task name, so it drains the very backlog Ticks drains
(the same messages, copied), and only Celery's own cost per message remains.
"""

import os

from workers.celery_app import APPLY_EVENTS, make_celery

app = make_celery(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name=APPLY_EVENTS)
def noop(payload: object) -> None:
    """Do nothing with a message."""


__all__ = ["app"]
