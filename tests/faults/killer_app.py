"""The worker app, except that it dies (SIGKILL) on any event whose message id starts KILL.

Stands for a message that crashes its worker every time (out of memory, a C extension
fault): the test starts `celery -A tests.faults.killer_app worker` instead of the real app.
"""

import os
import signal

import workers.tasks  # noqa: F401  (registers the tasks)
from workers.celery_app import app
from workers.core import store

__all__ = ["app"]
real_apply_events = store.apply_events


def apply_or_die(conn, events, refused=None):
    if any(event.message_id.startswith("KILL") for event in events):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_apply_events(conn, events, refused)


store.apply_events = apply_or_die
