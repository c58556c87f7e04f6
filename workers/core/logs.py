"""Logs for people and for log stacks: one JSON object per line on stdout (LOG_FORMAT=text for
a terminal), webhook tokens redacted from every record, the Celery task on every worker line.

Web (gunicorn's logconfig_dict) and worker (Celery's setup_logging signal) share this.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from workers.core.redact import RedactTokens

JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
RENAME = {"levelname": "level", "name": "logger", "process": "pid"}


def log_format() -> str:
    """Return "json" (the default) or "text", from LOG_FORMAT."""
    value = os.environ.get("LOG_FORMAT", "json").strip().lower()
    if value not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT must be json or text, not {value!r}")
    return value


class TaskFields(logging.Filter):
    """Add the running Celery task's id and name to each record (the worker's side of the
    request id: a task's log lines carry its id, and its applied line the callbacks' ids)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery import current_task

        task = current_task
        if task and task.request and task.request.id and not hasattr(record, "task_id"):
            record.task_id = task.request.id
            record.task_name = task.name
        return True


def formatter_config() -> dict[str, Any]:
    """Return the dictConfig entry of the formatter LOG_FORMAT asks for (for gunicorn)."""
    if log_format() == "json":
        return {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": RENAME,
            "timestamp": "time",
        }
    return {"format": TEXT_FORMAT}


def dict_config(level: str, own_loggers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A logging.config.dictConfig for a web server: the root logger (the app's lines) and
    the server's own loggers (``own_loggers``: not once more through the root) to stdout, as
    LOG_FORMAT asks, with webhook tokens redacted from both (servers write request paths)."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact_tokens": {"()": "workers.core.redact.RedactTokens"}},
        "formatters": {"ticks": formatter_config()},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            name: {"level": level, "handlers": ["server_console"], "propagate": False}
            for name in own_loggers
        },
        "handlers": {
            name: {
                "class": "logging.StreamHandler",
                "formatter": "ticks",
                "stream": "ext://sys.stdout",
                "filters": ["redact_tokens"],
            }
            for name in ("console", "server_console")
        },
    }


def formatter() -> logging.Formatter:
    """Return the formatter LOG_FORMAT asks for."""
    if log_format() == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=RENAME, timestamp="time")
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str | int = "INFO", task_fields: bool = False) -> None:
    """Send every log record to stdout through one handler on the root logger."""
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter())
    stream.addFilter(RedactTokens())
    if task_fields:
        stream.addFilter(TaskFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(stream)
    root.setLevel(level)
