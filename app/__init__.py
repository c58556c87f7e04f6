"""Ticks web: a thin Flask endpoint that validates status callbacks and enqueues them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.config import check_config, load_config
from app.errors import register_error_handlers
from app.metrics import init_metrics
from app.queue import init_queue
from app.version import __version__  # noqa: F401  (the package's version, for its users)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the web application."""
    app = Flask(__name__)
    app.config.update(load_config())
    if test_config:
        app.config.update(test_config)
    check_config(app.config)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Werkzeug answers "//" in a path with an HTML redirect; a webhook URL is exact or 404.
    app.url_map.merge_slashes = False
    init_queue(app)
    register_error_handlers(app)
    init_metrics(app)

    from app import (
        changes,
        erasures,
        health,
        instances,
        messages,
        openapi,
        operations,
        status_page,
        subscriptions,
        webhooks,
    )

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(changes.bp)
    app.register_blueprint(instances.bp)
    app.register_blueprint(erasures.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(status_page.bp)
    app.cli.add_command(operations.quarantine_cli)
    app.cli.add_command(operations.deadletters_cli)
    app.cli.add_command(operations.export)
    app.cli.add_command(instances.insights_command)
    app.cli.add_command(subscriptions.subscriptions_cli)
    app.cli.add_command(erasures.erase_cli)
    return app
