"""Fields shared by the provider schemas."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields

NON_DIGITS = re.compile(r"[^0-9]")


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


class EpochSecondsOrMillis(EpochTimestamp):
    """An epoch timestamp in seconds or in milliseconds, told apart by size: Z-API's
    connection webhooks give ``momment`` in seconds in one example and milliseconds in
    another (10^11 seconds is the year 5138; 10^11 milliseconds is 1973)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(per_second=1, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        digits = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
        self.per_second = 1000 if digits.isdigit() and int(digits) >= 10**11 else 1
        return super()._deserialize(value, attr, data, **kwargs)


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


# What a chat id names. WhatsApp's ids: `<digits>@c.us` / `<digits>@s.whatsapp.net` (a person
# by phone), `<id>@lid` (a person behind WhatsApp's anonymised id, no phone in it), groups as
# `<id>@g.us`, Z-API's `<id>-group` or the older `<creator phone>-<epoch>`, and
# `status@broadcast` (status posts) or `<id>@broadcast` (broadcast lists).
USER, LID, GROUP, BROADCAST = "user", "lid", "group", "broadcast"
CHAT_KINDS = (USER, LID, GROUP, BROADCAST)
# A phone as ASCII digits, or written for people ("+55 (44) 99999-9999"), with at least
# MIN_PHONE_DIGITS digits (the shortest international numbers).
PHONE = re.compile(r"\+?[0-9][0-9 ().-]{4,30}", re.ASCII)
MIN_PHONE_DIGITS = 7
USER_SUFFIXES = ("@c.us", "@s.whatsapp.net")
# <creator's phone>-<creation epoch>: long on both sides, unlike a written phone's dash.
OLD_GROUP_ID = re.compile(r"[0-9]{8,}-[0-9]{9,}")


@dataclasses.dataclass(frozen=True)
class Chat:
    """Who a message went to: a phone only when the id is one, else the id and its kind."""

    chat_id: str | None = None
    chat_kind: str | None = None
    phone: str | None = None


def chat_identity(value: str | None, *, is_group: bool | None = None) -> Chat:
    """Classify a chat id as sent by a provider (``is_group`` when the provider says so)."""
    if not value:
        return Chat(chat_kind=GROUP if is_group else None)
    text = value.strip()
    local, at, domain = text.partition("@")
    if at and domain == "broadcast":
        return Chat(text, BROADCAST)
    if at and domain == "lid":
        return Chat(text, LID)
    if (
        is_group
        or (at and domain == "g.us")
        or text.endswith("-group")
        or OLD_GROUP_ID.fullmatch(local)
    ):
        return Chat(text, GROUP)
    number = local.partition(":")[0]  # <phone>:<device>@s.whatsapp.net
    digits = digits_only(number) or ""
    if (
        (not at or f"@{domain}" in USER_SUFFIXES)
        and PHONE.fullmatch(number)
        and len(digits) >= MIN_PHONE_DIGITS
    ):
        return Chat(text, USER, digits)
    return Chat(text, None)
