"""The web process: Ticks' Flask app under granian's WSGI server (the Procfile's `web`).

    python -m app.serve        # or the installed `ticks-web`

granian is an HTTP server written in Rust: connections, HTTP parsing and keep-alive are handled
outside the GIL, and only the app's own code runs in Python, on a pool of threads per process.
A request holds its thread until its callback is on the broker (app/queue.py), so each process
has as many threads as gunicorn's gthread workers had (WEB_THREADS). Measured against
gunicorn's gthread workers at 300 callbacks/s (docs/benchmarks.md): a third less web CPU per
callback, and an HTTP p99 of 61 ms against 225 ms, since a request held for its group costs
granian a thread and nothing more. app/gunicorn_conf.py still runs the same app under gunicorn
for a platform that wants it.

Settings (environment): HOST (0.0.0.0), PORT (8000), WEB_CONCURRENCY (2 processes),
WEB_THREADS (64 per process), LOG_LEVEL (info), LOG_FORMAT, PROMETHEUS_MULTIPROC_DIR (made
and removed here when unset). No access log: webhook URLs carry tokens; Ticks logs the
callbacks itself, without them. SIGTERM or SIGINT: stop accepting, finish the requests in
flight (up to GRACEFUL_TIMEOUT seconds), exit.
"""

from __future__ import annotations

import logging
import logging.config
import os
import shutil
import sys

from workers.core.logs import dict_config
from workers.core.settings import whole
from workers.metrics import web_metrics_dir

APP = "app:create_app"
GRACEFUL_TIMEOUT = 8  # seconds, as gunicorn's graceful_timeout was
SERVER_LOGGERS = ("_granian", "granian.access")

log = logging.getLogger("ticks.web")


def main() -> int:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    level = os.environ.get("LOG_LEVEL", "info").strip().lower()
    if level not in LogLevels.__members__:
        raise SystemExit(
            f"ticks-web: LOG_LEVEL must be one of {', '.join(LogLevels.__members__)}, not {level!r}"
        )
    config = dict_config(level, SERVER_LOGGERS)
    logging.config.dictConfig(config)
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 (a platform routes to it)
    try:
        port = whole(os.environ, "PORT", 8000, 0, 65535)
        workers = whole(os.environ, "WEB_CONCURRENCY", 2, 1, 10_000, "processes")
        threads = whole(os.environ, "WEB_THREADS", 64, 1, 10_000, "threads")
    except RuntimeError as exc:
        raise SystemExit(f"ticks-web: {exc}") from None
    own_dir = web_metrics_dir()
    try:
        try:
            # Bad configuration stops the web here, once, with the fix (as gunicorn's preload
            # did).
            from app import create_app

            create_app()
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        Server(
            APP,
            address=host,
            port=port,
            interface=Interfaces.WSGI,
            factory=True,
            workers=workers,
            blocking_threads=threads,
            websockets=False,
            log_level=LogLevels(level),
            log_dictconfig=config,
            log_access=False,
            respawn_failed_workers=True,
            workers_kill_timeout=GRACEFUL_TIMEOUT,
        ).serve()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
