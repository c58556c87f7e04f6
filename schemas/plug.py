"""Plug (plugchat.com.br): a Z-API style API, both its 2022 and 2025 dialects.

The 2022 docs send ``MESSAGE_RECEIVED`` and no ``instanceId``; the 2025 docs the Z-API
values. The Z-API schema accepts both, so Plug differs only by its provider name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.events import Parsed
from schemas.zapi import to_events


def parse(body: Any, *, received_at: datetime, request_id: str) -> Parsed:
    """Turn a Plug status callback into events."""
    return to_events("plug", body, received_at=received_at, request_id=request_id)
