"""The worker's health check: is it consuming, does its event loop turn, does PostgreSQL answer?

The worker's main process keeps its state here (``Liveness``, a consumer bootstep): consuming
from the moment Celery's consumer starts until it stops (a lost broker connection stops it
until the reconnection), and a tick of its event loop every TICK_SECONDS. ``GET /healthz`` on
the worker's metrics port (WORKER_METRICS_PORT, workers/metrics.py) answers 200 when the
worker consumes, its loop ticked recently and PostgreSQL answers within 2 s; 503 naming what
failed otherwise. A worker frozen whole does not answer at all.

``python -m workers.health`` (or ``ticks-worker-health``) asks it and exits 0 when healthy,
1 otherwise: a Docker HEALTHCHECK or a Kubernetes exec probe. Kubernetes can also probe
``/healthz`` over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import psycopg
from celery import bootsteps

from workers.core.db import database_url

TICK_SECONDS = 5.0
# The loop counts as stuck past this long without a tick (a task holds it in the solo pool,
# or the process is starved).
STALE_SECONDS = 30.0
DATABASE_TIMEOUT_SECONDS = 2


class State:
    """What the worker's main process knows of itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.consuming = False
        self.last_tick: float | None = None

    def tick(self) -> None:
        with self.lock:
            self.last_tick = time.monotonic()

    def set_consuming(self, consuming: bool) -> None:
        with self.lock:
            self.consuming = consuming
            if consuming:
                self.last_tick = time.monotonic()


STATE = State()


class Liveness(bootsteps.StartStopStep):
    """Marks the worker consuming while Celery's consumer runs, and ticks on its loop."""

    requires: ClassVar[tuple[str, ...]] = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        STATE.set_consuming(True)
        self.timer_ref = c.timer.call_repeatedly(TICK_SECONDS, STATE.tick, priority=10)

    def stop(self, c: Any) -> None:
        STATE.set_consuming(False)
        ref = getattr(self, "timer_ref", None)
        if ref is not None:
            ref.cancel()

    def shutdown(self, c: Any) -> None:
        self.stop(c)


def database_answers() -> bool:
    try:
        with psycopg.connect(database_url(), connect_timeout=DATABASE_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def check(state: State = STATE) -> tuple[bool, dict[str, Any]]:
    """Return whether the worker is healthy, and what each check found."""
    with state.lock:
        consuming, last_tick = state.consuming, state.last_tick
    age = None if last_tick is None else round(time.monotonic() - last_tick, 1)
    body: dict[str, Any] = {
        "consuming": consuming,
        "loop_seconds_since_tick": age,
        "database": "ok" if database_answers() else "unavailable",
    }
    problems = []
    if not consuming:
        problems.append("not consuming (broker unreachable, or the consumer stopped)")
    elif age is None or age > STALE_SECONDS:
        problems.append(f"event loop stuck: no tick for {age} s")
    if body["database"] != "ok":
        problems.append("database unavailable")
    if problems:
        body["error"] = "; ".join(problems)
    else:
        body["status"] = "ok"
    return not problems, body


def health_app(
    metrics_app: Callable[..., Iterable[bytes]],
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: /healthz answers the check, every other path the metrics app."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        healthy, body = check()
        start_response(
            "200 OK" if healthy else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        )
        return [json.dumps(body).encode()]

    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: an optional URL, and --help saying what the exit codes mean."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.health",
        description="Ask the worker on this host whether it is healthy (GET /healthz on its "
        "metrics port) and print its answer: exit 0 if healthy, 1 if not or not answering. "
        "For a Docker HEALTHCHECK or a Kubernetes exec probe.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        help="the URL to ask (default: http://$WORKER_METRICS_ADDRESS:$WORKER_METRICS_PORT"
        "/healthz, i.e. http://127.0.0.1:9808/healthz)",
    )
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://", "https://")):
        parser.error(f"the URL must start with http:// or https://, not {args.url!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Ask the worker on this host whether it is healthy; exit 0 if so, 1 if not."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    port = int(os.environ.get("WORKER_METRICS_PORT", "9808"))
    address = os.environ.get("WORKER_METRICS_ADDRESS", "127.0.0.1")
    url = args.url or f"http://{address}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http only)
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        print(err.read().decode(), file=sys.stderr)
    except (OSError, TimeoutError) as exc:
        print(f"worker not answering at {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
