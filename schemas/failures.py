"""What a failed message's reason means: a short reason (the provider's code) and a class
(recipient, policy, integration, throttling, transient, unknown), one vocabulary for every
provider. Read from the failure_reason each provider's parser writes (schemas/<provider>.py):
Meta ``<code> <title>: <details>``, Green-API ``<status>[: <description>]``, Twilio
``<status>: <ErrorCode> <ErrorMessage>``, Z-API ``<errorCode>: <error>``, WAHA and Evolution
their raw ``ERROR``."""

from __future__ import annotations

import re

RECIPIENT = "recipient"  # the number cannot receive it: no WhatsApp, unreachable, ecosystem
POLICY = "policy"  # the sending number's quality, a restriction, a ban, a template refused
INTEGRATION = "integration"  # the sender's request or set-up is wrong (parameters, auth)
THROTTLING = "throttling"  # rate or pair-rate limits
TRANSIENT = "transient"  # the provider's or WhatsApp's own temporary failure
UNKNOWN = "unknown"
CLASSES = (RECIPIENT, POLICY, INTEGRATION, THROTTLING, TRANSIENT, UNKNOWN)

# Meta's Cloud API error codes (developers.facebook.com/docs/whatsapp/cloud-api/support/
# error-codes).
META = {
    "131026": RECIPIENT,  # message undeliverable (no WhatsApp, old app, not accepted terms)
    "131049": POLICY,  # not delivered to keep the ecosystem healthy (marketing limits)
    "131047": POLICY,  # re-engagement: more than 24 h since the customer's last message
    "131048": POLICY,  # spam rate limit: the number's quality restricted it
    "130472": POLICY,  # the user's number is part of an experiment
    "131031": POLICY,  # account locked or restricted
    "368": POLICY,  # temporarily blocked for policy violations
    "131056": THROTTLING,  # pair rate limit: too many messages to one user
    "130429": THROTTLING,  # throughput rate limit
    "131000": TRANSIENT,  # something went wrong
    "131016": TRANSIENT,  # service unavailable
    "133004": TRANSIENT,  # server temporarily unavailable
    "131051": INTEGRATION,  # unsupported message type
    "131052": INTEGRATION,  # media download error
    "131053": INTEGRATION,  # media upload error
    "132000": INTEGRATION,  # template parameter count mismatch
    "132001": INTEGRATION,  # template does not exist
    "132012": INTEGRATION,  # template parameter format mismatch
    "132015": POLICY,  # template paused for low quality
    "132016": POLICY,  # template disabled for low quality
    "190": INTEGRATION,  # access token expired
    "131005": INTEGRATION,  # permission denied
    "131008": INTEGRATION,  # required parameter missing
    "131009": INTEGRATION,  # parameter value invalid
}
# Green-API's failure statuses (green-api.com docs, outgoingMessageStatus).
GREEN_API = {"noAccount": RECIPIENT, "notInGroup": RECIPIENT, "yellowCard": POLICY}
# Twilio's WhatsApp error codes (twilio.com/docs/api/errors).
TWILIO = {
    "63003": RECIPIENT,  # channel could not find the destination
    "63024": RECIPIENT,  # invalid message recipient
    "63016": POLICY,  # outside the 24 h window without a template
    "63018": THROTTLING,  # rate limit exceeded
    "63049": POLICY,  # Meta chose not to deliver (marketing limits)
    "63051": POLICY,  # the WhatsApp business account is locked
    "63032": RECIPIENT,  # user's number is part of an experiment
    "63005": INTEGRATION,  # channel did not accept the content
    "63013": POLICY,  # channel policy violation
    "63001": INTEGRATION,  # channel could not authenticate the request
    "63007": INTEGRATION,  # sender not found on the channel
    "63009": TRANSIENT,  # channel provider returned an internal error
    "30008": UNKNOWN,  # unknown error
}
LEADING_CODE = re.compile(r"^\s*(\d{2,6})\b")
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
        if status == "blocked":
            return POLICY, status
        return GREEN_API.get(status, UNKNOWN), status
    if provider == "twilio":
        match = TWILIO_CODE.search(reason)
        if not match:
            return UNKNOWN, short(reason.split(":", 1)[0])
        return TWILIO.get(match.group(1), UNKNOWN), match.group(1)
    match = LEADING_CODE.match(reason)  # Z-API's errorCode first, when it sends one
    return UNKNOWN, match.group(1) if match else short(reason)


def short(reason: str) -> str:
    """A reason without a known code, cut to its first 40 characters, a long run of digits
    (a phone number in a provider's message) left out."""
    return LONG_DIGITS.sub("#", " ".join(reason.split()))[:40] or "unknown"
