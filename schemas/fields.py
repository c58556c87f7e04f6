"""Fields shared by the provider schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields

NON_DIGITS = re.compile(r"\D")


class EpochTimestamp(fields.Field):
    """An epoch timestamp, integer or a string of digits, as an aware UTC datetime.

    Z-API documents ``momment`` as an integer of milliseconds on one page and as a string
    on another, so both are accepted; anything else (floats, booleans, words) is refused.
    """

    def __init__(self, *, per_second: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_second = per_second

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
        if not (text.isascii() and text.isdigit()):
            raise ValidationError("Must be an integer epoch timestamp.")
        try:
            return datetime.fromtimestamp(int(text) / self.per_second, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValidationError("Timestamp out of range.") from None


def digits_only(value: str | None) -> str | None:
    """Return the digits of a phone number or chat id, or None when it has none."""
    if value is None:
        return None
    digits = NON_DIGITS.sub("", value)
    return digits or None


class Identifier(fields.Field):
    """An identifier sent as a string or an integer, stored as a non-empty string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValidationError("Must be a string.")
        text = str(value).strip()
        if not text:
            raise ValidationError("Must not be empty.")
        return refuse_nul(text)


class Text(fields.String):
    """A string that PostgreSQL can store."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return refuse_nul(super()._deserialize(value, attr, data, **kwargs))


def refuse_nul(text: str) -> str:
    """Refuse NUL characters: PostgreSQL text cannot hold them, so the worker would fail."""
    if "\x00" in text:
        raise ValidationError("Must not contain NUL characters.")
    return text
