"""What a failed message's reason means: a short reason (the provider's code) and a class
(recipient, policy_or_quality, integration, throttling, transient, unknown), one vocabulary for
every provider. Read from the failure_reason each provider's parser writes (schemas/<provider>.py):
Meta ``<code> <title>: <details>``, Green-API ``<status>[: <description>]``, Twilio
``<status>: <ErrorCode> <ErrorMessage>``, Z-API ``<errorCode>: <error>``, WAHA and Evolution
their raw ``ERROR``."""

from __future__ import annotations

import re

RECIPIENT = "recipient"  # this destination cannot or may not receive it
POLICY = "policy_or_quality"  # the sender's number or account restricted or judged low quality
INTEGRATION = "integration"  # the request or the account's set-up is wrong: fix on our side
THROTTLING = "throttling"  # too fast: rate or pair-rate limits
TRANSIENT = "transient"  # the provider's or WhatsApp's own temporary failure
UNKNOWN = "unknown"
CLASSES = (RECIPIENT, POLICY, INTEGRATION, THROTTLING, TRANSIENT, UNKNOWN)

# The tables are docs/research-connection-events.md's ("Failure codes and their classes"),
# each read in the provider's own docs.


def codes(kind: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, kind)


# Meta's Cloud API errors[].code (developers.facebook.com, error codes, 2026-09).
META = {
    **codes(RECIPIENT, "131026", "131049", "130472", "131050"),
    **codes(POLICY, "131048", "131031", "368", "130497", "131064", "132015", "132016"),
    **codes(THROTTLING, "131056", "130429", "4", "80007"),
    **codes(TRANSIENT, "131016", "1", "2", "133004", "131057"),
    **codes(
        INTEGRATION,
        *("131047", "131042", "131021", "130403", "131045", "133010"),
        *("0", "3", "10", "190", "200", "100", "131008", "131009", "131051", "131053"),
        *("132000", "132001", "132012", "131063"),
    ),
    "131000": UNKNOWN,  # "something went wrong": try again once
}
# Green-API's outgoingMessageStatus failures.
GREEN_API = {
    **codes(RECIPIENT, "noAccount", "notInGroup", "noActiveSession"),
    "yellowCard": POLICY,  # sending suspended for spam-like activity
}
# Twilio's WhatsApp ErrorCode (twilio.com/docs/api/errors).
TWILIO = {
    **codes(RECIPIENT, "63003", "63024", "63032", "63049"),
    "63016": INTEGRATION,  # outside the messaging window: send a template
    "63018": THROTTLING,
    "30007": POLICY,  # filtered as spam or fraud
    "30008": UNKNOWN,
}
# Z-API's DeliveryCallback errorCode, else its error text (live captures, PROVIDERS.md).
ZAPI_CODES = {"SHADOW_BAN": POLICY}
ZAPI_TEXTS = {
    "does not exist": RECIPIENT,
    "timeout on send message": TRANSIENT,
}
LEADING_CODE = re.compile(r"^\s*(\d{1,6})\b")
LEADING_NAME = re.compile(r"^\s*([A-Z][A-Z_]{2,40})\s*:")
TWILIO_CODE = re.compile(r":\s*(\d{5})\b")
LONG_DIGITS = re.compile(r"\+?\d{7,}")


def classify(provider: str, reason: str | None) -> tuple[str, str]:
    """Return (class, short reason) of a failure; ("unknown", "unknown") without a reason."""
    if not reason:
        return UNKNOWN, "unknown"
    if provider == "meta":
        match = LEADING_CODE.match(reason)
        code = match.group(1) if match else short(reason)
        return META.get(code, UNKNOWN), code
    if provider == "greenapi":
        status = reason.split(":", 1)[0].strip()
        return GREEN_API.get(status, UNKNOWN), status
    if provider == "twilio":
        match = TWILIO_CODE.search(reason)
        if not match:
            return UNKNOWN, short(reason.split(":", 1)[0])
        return TWILIO.get(match.group(1), UNKNOWN), match.group(1)
    match = LEADING_CODE.match(reason)
    label = match.group(1) if match else short(reason)
    if provider == "zapi":
        name = LEADING_NAME.match(reason)  # "<errorCode>: <error>" when it sends a code
        if name and name.group(1) in ZAPI_CODES:
            return ZAPI_CODES[name.group(1)], name.group(1)
        lowered = reason.lower()
        for text, kind in ZAPI_TEXTS.items():
            if text in lowered:
                return kind, label
    return UNKNOWN, label


def short(reason: str) -> str:
    """A reason without a known code, cut to its first 40 characters, a long run of digits
    (a phone number in a provider's message) left out."""
    return LONG_DIGITS.sub("#", " ".join(reason.split()))[:40] or "unknown"
