"""Configuration, read once from the environment (12-factor)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from schemas.proofs import UrlSignatureAuth, each
from schemas.registry import REGISTRY
from workers.brokers.broker import broker_url
from workers.core.db import DEFAULT_DATABASE_URL
from workers.core.settings import seconds
from workers.outbound.post import allow_private

# Where the web app keeps its publishing Celery app (app.extensions).
CELERY_EXTENSION = "ticks.celery"
DEFAULT_MAX_BODY_BYTES = 65536


def split_tokens(value: str | None) -> tuple[str, ...]:
    """Return the non-empty tokens of a comma-separated list."""
    return tuple(token.strip() for token in (value or "").split(",") if token.strip())


def load_config(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Return the app's settings from environment variables."""
    return {
        "DATABASE_URL": env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        # BROKER_URL (amqp:// RabbitMQ, redis:// Redis), else REDIS_URL (workers/brokers/broker.py).
        "BROKER_URL": broker_url(env),
        "API_TOKEN": env.get("API_TOKEN", ""),
        # Where providers reach Ticks (scheme, host, port): a signature over the URL (Twilio's)
        # is checked against it. Unset: the request's own Host.
        "PUBLIC_URL": env.get("PUBLIC_URL", "").rstrip("/"),
        # Every provider's secrets, by the setting its record names: the tokens or signing
        # secrets that prove a callback came from it, and those of its subscription handshake.
        "PROVIDER_SECRETS": {
            setting: split_tokens(env.get(setting))
            for record in REGISTRY.values()
            for setting in record.settings
        },
        "MAX_BODY_BYTES": int(env.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        "RETRY_AFTER_SECONDS": int(env.get("RETRY_AFTER_SECONDS", "5")),
        "STATUS_PAGE_CACHE_SECONDS": seconds(env, "STATUS_PAGE_CACHE_SECONDS", "10"),
        # How long a group of callbacks is held open for more while they arrive densely
        # (app/queue.py). 0 publishes each request's callbacks at once.
        "GROUP_LINGER_SECONDS": seconds(env, "GROUP_LINGER_MS", "50", 1000, "milliseconds") / 1000,
        # A message still at sent this long after it was sent is stuck (GET /insights).
        "STUCK_AFTER_SECONDS": seconds(env, "STUCK_AFTER", "600", 7 * 86400),
        # Subscriptions may name receivers on private and loopback addresses
        # (workers/outbound/post.py).
        "SUBSCRIPTIONS_ALLOW_PRIVATE": allow_private(env),
    }


def check_config(config: Mapping[str, Any]) -> None:
    """Fail at start-up, with the fix, when a required setting is missing."""
    secrets = config["PROVIDER_SECRETS"]
    for record in REGISTRY.values():
        signs_url = [p for p in each(record.auth) if isinstance(p, UrlSignatureAuth)]
        if signs_url and record.configured(secrets) and not config["PUBLIC_URL"]:
            raise RuntimeError(
                f"{signs_url[0].setting} is set but PUBLIC_URL is not: {record.title} signs "
                "the URL it calls, so set PUBLIC_URL to the scheme, host and port it calls "
                "(https://ticks.example.com); the Host of each request is not to be trusted"
            )
    if not config["API_TOKEN"]:
        raise RuntimeError(
            "API_TOKEN is not set: set it to a long random string; it guards the read API "
            "(GET /messages/..., the status page). `make run` generates one in var/secrets.env."
        )
