"""Token checks, in constant time."""

from __future__ import annotations

from collections.abc import Iterable

from flask import current_app, request

from app.errors import ApiError
from schemas.proofs import any_matches, header_token


def token_matches(given: str | None, accepted: Iterable[str]) -> bool:
    """Return whether ``given`` equals one of ``accepted``, comparing every one in full."""
    return any_matches((given or "").encode(), (token.encode() for token in accepted))


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
