"""Every error is answered as JSON with an ``error`` string."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered with a status code and a JSON body."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def json_error(status: int, message: str, headers: Any = None, **extra: Any) -> Response:
    """Return a JSON error response."""
    response = jsonify(error=message, **extra)
    response.status_code = status
    if headers:
        response.headers.extend(headers)
    return response


def handle_api_error(error: ApiError) -> Response:
    """Answer an ApiError."""
    return json_error(error.status, error.message, error.headers, **error.extra)


def handle_http_exception(error: HTTPException) -> Response:
    """Answer werkzeug's errors (404, 405 with Allow, 413...) as JSON, keeping their headers."""
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return json_error(error.code or 500, (error.name or "error").lower(), headers)


def handle_unexpected(error: Exception) -> Response:
    """Answer a bug as a JSON 500 without details, and log it.

    The log names the route pattern, not the path: webhook paths carry tokens.
    """
    rule = request.url_rule.rule if request.url_rule else "-"
    log.error("unhandled error on %s %s", request.method, rule, exc_info=error)
    return json_error(500, "internal error")


def register_error_handlers(app: Flask) -> None:
    """Install the JSON error handlers."""
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
