"""Token checks, in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import current_app, request

from app.errors import ApiError


def header_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization`` header: ``<scheme> <token>`` or a bare token."""
    parts = (authorization or "").split()
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[1]
    return None


def token_matches(given: str | None, accepted: Iterable[str]) -> bool:
    """Return whether ``given`` equals one of ``accepted``, comparing every one in full."""
    candidate = (given or "").encode()
    found = False
    for token in accepted:
        found |= hmac.compare_digest(candidate, token.encode())
    return found and bool(candidate)


def require_api_token() -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <API_TOKEN>``."""
    given = header_token(request.headers.get("Authorization"))
    if not token_matches(given, [current_app.config["API_TOKEN"]]):
        raise ApiError(401, "missing or invalid API token", {"WWW-Authenticate": "Bearer"})


def require_person() -> None:
    """Refuse a page request unless it carries API_TOKEN: as a Bearer token, or as the
    password of HTTP basic auth (any user name), so a browser can ask a person for it."""
    auth = request.authorization
    accepted = [current_app.config["API_TOKEN"]]
    if auth is not None and auth.type == "basic":
        if token_matches(auth.password, accepted):
            return
    elif token_matches(header_token(request.headers.get("Authorization")), accepted):
        return
    challenge = 'Basic realm="Ticks", charset="UTF-8"'
    raise ApiError(401, "missing or invalid API token", {"WWW-Authenticate": challenge})
