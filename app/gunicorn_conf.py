"""gunicorn settings for the web process; every value can be overridden by the environment."""

import os
import shutil

from gunicorn.glogging import Logger

from workers.core.logs import dict_config
from workers.metrics import web_metrics_dir

# Metrics: every worker process writes its samples here and /metrics adds them up. Set in
# gunicorn's master before create_app() makes the metrics (app/metrics.py: they follow the
# directory whatever imported prometheus_client first), emptied at start so no old process
# counts.
OWN_METRICS_DIR = web_metrics_dir()


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the sum)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics directory gunicorn made for itself."""
    if OWN_METRICS_DIR:
        shutil.rmtree(OWN_METRICS_DIR, ignore_errors=True)


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# A request holds its thread until the message holding its callback is on the broker, and
# callbacks share messages (app/queue.py, GroupPublisher): a process groups at most as many
# callbacks as it has threads (64: at 1,300/s, HTTP p99 131 ms against 534 ms with 16).
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "64"))
# Green-API waits up to 180 s but Meta expects ~250 ms: a request that takes 30 s is a bug.
timeout = 30
graceful_timeout = 8
# The app fails at start-up on bad configuration; preloading shows that error once, early.
preload_app = True
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


class NoAccessLog(Logger):
    """gunicorn's logger without the access log.

    Webhook URLs carry the provider's token (/webhooks/<provider>/<token>), and gunicorn writes
    the access log whenever a logging config is given, whatever ``accesslog`` says. Ticks logs
    each callback itself, with the route and never the token.
    """

    def access(self, resp, req, environ, request_time):
        """Log nothing."""


logger_class = NoAccessLog
accesslog = None
# The app logs through the root logger, to stdout like gunicorn, as
# JSON (LOG_FORMAT=text for a terminal); gunicorn's own messages go to its handler only, not
# once more through the root. Both handlers redact webhook tokens: gunicorn writes request
# paths at debug level and in errors.
logconfig_dict = dict_config(loglevel, ("gunicorn.error",))
