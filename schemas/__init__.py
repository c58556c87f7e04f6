"""Provider schemas: turn a callback body into canonical status events. No I/O."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Protocol

from schemas.events import StatusEvent


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What a callback body holds: status events, or another webhook type to ignore.

    ``errors``, when set, names the parts of a body that batches many statuses (Meta's) that
    did not validate: ``events`` are the valid rest, and the body is quarantined as well."""

    events: list[StatusEvent]
    ignored: str | None = None
    errors: dict[str, Any] | None = None


class Provider(Protocol):
    """A provider dialect: one function from a JSON body to canonical events."""

    def __call__(self, body: Any, *, received_at: datetime, request_id: str) -> Parsed: ...


def providers() -> dict[str, Provider]:
    """Return the parser of every supported provider, by its URL name."""
    from schemas.registry import REGISTRY

    return {name: record.parse for name, record in REGISTRY.items()}
