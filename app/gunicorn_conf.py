"""gunicorn settings for the web process; every value can be overridden by the environment."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let concurrent callbacks share one broker message (app/queue.py, GroupPublisher):
# under a burst the endpoint publishes once for many callbacks instead of once for each.
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
# Green-API waits up to 180 s but Meta expects ~250 ms: a request that takes 30 s is a bug.
timeout = 30
graceful_timeout = 8
# The app fails at start-up on bad configuration; preloading shows that error once, early.
preload_app = True
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The app logs through the root logger (one line per callback); send it to stderr too.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
}
