"""Paced (open-loop) callbacks through the endpoint, for fault tests that run under load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flask.testing import FlaskClient

from tests.faults.helpers import ZAPI_URL, zapi


@dataclass
class PacedLoad:
    """Post one SENT callback for a new message id every 1/rate seconds, on a schedule.

    Arrivals keep their schedule whatever the answers take (a pool of senders), as providers'
    do: a slow or refusing endpoint does not slow the offered rate. Records each answer.
    """

    client: FlaskClient
    prefix: str
    rate: float = 100
    senders: int = 16
    answers: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> PacedLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _post(self, message_id: str) -> None:
        try:
            status = self.client.post(ZAPI_URL, json=zapi("SENT", message_id)).status_code
        except Exception:
            status = 0
        with self._lock:
            self.answers[message_id] = status

    def _run(self) -> None:
        started = time.monotonic()
        with ThreadPoolExecutor(self.senders) as pool:
            n = 0
            while not self._stop.is_set():
                due = started + n / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self._post, f"{self.prefix}-{n}")
                n += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def accepted(self) -> set[str]:
        """Message ids whose callback was answered 200."""
        with self._lock:
            return {mid for mid, status in self.answers.items() if status == 200}

    def refused(self) -> int:
        with self._lock:
            return sum(1 for status in self.answers.values() if status != 200)
