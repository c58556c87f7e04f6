"""Keep personal data out of logs."""

from __future__ import annotations

import hashlib
import logging
import re

KEEP_DIGITS = 4


def mask_phone(phone: str | None) -> str:
    """Return a phone number with all but its last four characters masked."""
    if not phone:
        return "-"
    if len(phone) <= KEEP_DIGITS:
        return "*" * len(phone)
    return "*" * (len(phone) - KEEP_DIGITS) + phone[-KEEP_DIGITS:]


# A chat id's number inside a message id (WAHA's: true_<phone>@c.us_<id>).
PHONE_LIKE = re.compile(r"[0-9]{5,}(?=@)")
# Meta's wamid is base64 of bytes that hold the recipient's number.
META_ID_PREFIX = "wamid."


def mask_message_id(message_id: str) -> str:
    """A message id as logs may show it: a Meta wamid as a fingerprint of itself, any other
    id with the number of a chat id in it masked but for its last four digits."""
    if message_id.startswith(META_ID_PREFIX):
        digest = hashlib.sha256(message_id.encode()).hexdigest()[:16]
        return f"{META_ID_PREFIX}#{digest}"
    return PHONE_LIKE.sub(lambda m: mask_phone(m.group()), message_id)


# A run of digits long enough to be a phone number, anywhere (an instance named after its
# number: Evolution's and WAHA's often are).
DIGIT_RUN = re.compile(r"[0-9]{5,}")


def mask_numbers(text: str) -> str:
    """Text as logs may show it: every run of five or more digits masked but its last four."""
    return DIGIT_RUN.sub(lambda m: mask_phone(m.group()), text)


# /webhooks/<provider>/<token>: the token is a secret wherever the path is written.
WEBHOOK_TOKEN_IN_PATH = re.compile(r"(/webhooks/[^/\s]+/)[^\s\"'?#]+")


def redact_paths(text: str) -> str:
    """Return text with the token of every webhook path replaced by ***."""
    return WEBHOOK_TOKEN_IN_PATH.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """A handler filter: no record leaves with a webhook token in it (gunicorn's debug lines
    and error reports write request paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_paths(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
