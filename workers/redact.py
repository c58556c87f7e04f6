"""Keep personal data out of logs."""

from __future__ import annotations

KEEP_DIGITS = 4


def mask_phone(phone: str | None) -> str:
    """Return a phone number with all but its last four characters masked."""
    if not phone:
        return "-"
    if len(phone) <= KEEP_DIGITS:
        return "*" * len(phone)
    return "*" * (len(phone) - KEEP_DIGITS) + phone[-KEEP_DIGITS:]
