"""Keep personal data out of logs."""

from __future__ import annotations

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
