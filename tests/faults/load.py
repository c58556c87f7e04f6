"""Paced (open-loop) callbacks through the endpoint, for fault tests that run under load."""

from __future__ import annotations

import heapq
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class RetryingLoad:
    """Post the given callbacks in order, one every 1/rate seconds (open loop, a pool of
    senders), and post again, ``retry_after`` seconds later, each one answered other than
    200, as providers retry a refused callback, until every one is answered 200."""

    client: FlaskClient
    bodies: list[dict[str, Any]]
    rate: float = 40
    senders: int = 16
    retry_after: float = 1.0
    refusals: int = 0
    _due: list[tuple[float, int, int]] = field(default_factory=list)  # (due, attempt, index)
    _accepted: set[int] = field(default_factory=set)
    _pending: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RetryingLoad:
        started = time.monotonic()
        self._due = [(started + n / self.rate, 0, n) for n in range(len(self.bodies))]
        heapq.heapify(self._due)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _post(self, attempt: int, index: int) -> None:
        try:
            status = self.client.post(ZAPI_URL, json=self.bodies[index]).status_code
        except Exception:
            status = 0
        with self._lock:
            self._pending -= 1
            if status == 200:
                self._accepted.add(index)
            else:
                self.refusals += 1
                heapq.heappush(self._due, (time.monotonic() + self.retry_after, attempt + 1, index))

    def _run(self) -> None:
        with ThreadPoolExecutor(self.senders) as pool:
            while not self._stop.is_set():
                with self._lock:
                    if not self._due:
                        if not self._pending:
                            return  # every callback answered 200
                        next_due = None
                    else:
                        next_due = self._due[0][0]
                        if next_due <= time.monotonic():
                            _, attempt, index = heapq.heappop(self._due)
                            self._pending += 1
                            pool.submit(self._post, attempt, index)
                            continue
                delay = 0.01 if next_due is None else next_due - time.monotonic()
                time.sleep(min(max(delay, 0), 0.05))

    def accepted(self) -> int:
        with self._lock:
            return len(self._accepted)

    def wait_all_accepted(self, timeout: float) -> None:
        """Wait until every callback was answered 200; fail the test past ``timeout``."""
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            raise AssertionError(
                f"{len(self.bodies) - self.accepted()} of {len(self.bodies)} callbacks never "
                f"answered 200 within {timeout}s ({self.refusals} refusals)"
            )
