"""A status worker's recurring chores (housekeeping, the number-health watch): each a Celery
bootstep that runs its round in a thread of its own, as the worker starts and then every
interval, in the main process of a worker that consumes the status queue."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from celery import bootsteps

from workers.core.settings import QUEUE


class Recurring(bootsteps.StartStopStep):
    """Subclasses name their thread, prepare what a round needs, give the interval, and do
    a round (which must not raise: the next one tries again)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}
    thread_name = "ticks-recurring"

    def include_if(self, worker: Any) -> bool:
        return QUEUE in worker.app.amqp.queues.consume_from

    def start(self, worker: Any) -> None:
        self.prepare()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name=self.thread_name, daemon=True)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if hasattr(self, "stopping"):
            self.stopping.set()

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.round()
            self.stopping.wait(self.interval())

    def prepare(self) -> None:
        """Before the first round."""

    def interval(self) -> float:
        raise NotImplementedError

    def round(self) -> None:
        raise NotImplementedError
