"""Reference: Ticks' Celery settings with a task that does nothing: the drain ceiling.

It registers a no-op under Ticks' own task name, so it drains the very backlog Ticks drains
(the same messages, copied), and only Celery's own cost per message remains.
"""

from workers.brokers.broker import broker_url
from workers.celery_app import APPLY_EVENTS, make_celery

app = make_celery(broker_url())  # BROKER_URL, else REDIS_URL, as Ticks' worker


@app.task(name=APPLY_EVENTS)
def noop(payload: object) -> None:
    """Do nothing with a message."""


__all__ = ["app"]
