"""Every provider Ticks takes callbacks from, one record each.

Configuration (which settings hold its secrets), the endpoint (how a callback proves its
sender, what an invalid body is answered), /openapi.json, `make run`'s printed URLs and the
parametrised tests all read these records. Adding a provider is one module in schemas/, one
record here, and fixtures in tests/fixtures/<name>/.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import parse_qsl

from marshmallow import Schema

from schemas import evolution, greenapi, meta, plug, twilio, waha, zapi
from schemas.events import Provider
from schemas.proofs import (
    EitherAuth,
    Proof,
    Secrets,
    SignatureAuth,
    TokenAuth,
    UrlSignatureAuth,
)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def form_fields(raw: bytes) -> list[tuple[str, str]]:
    """A form body's fields, in order (a repeated name once per value); ValueError if it is
    not UTF-8."""
    return parse_qsl(raw.decode("utf-8"), keep_blank_values=True)


def load_body(media_type: str, raw: bytes) -> Any:
    """A body as its provider's parser takes it: JSON, or a form as a dict (the last value of
    a repeated name). Raises ValueError (or RecursionError) when it is neither."""
    if media_type == FORM:
        return dict(form_fields(raw))
    return json.loads(raw)


@dataclasses.dataclass(frozen=True)
class Handshake:
    """A subscription check by GET: echo ``hub.challenge`` when ``hub.verify_token`` is one of
    the setting's tokens (Meta's verification request)."""

    setting: str


@dataclasses.dataclass(frozen=True)
class ProviderRecord:
    """What Ticks knows about one provider."""

    name: str  # in URLs (/webhooks/<name>), metrics and the database
    title: str
    parse: Provider
    auth: Proof
    # The answer to an authenticated body that does not validate (it is quarantined either
    # way). 200 where anything else makes the provider re-send it or hold what follows.
    invalid_status: int
    # The bodies it sends, for /openapi.json: (component name, schema).
    schemas: tuple[tuple[str, type[Schema]], ...]
    docs: str
    handshake: Handshake | None = None
    media_type: str = JSON
    # Whether the provider may add an event name after the URL it was given (Evolution's
    # webhook_by_events: <url>/messages-update).
    event_suffix: bool = False

    def configured(self, secrets: Secrets) -> bool:
        """Whether a callback could prove it came from this provider (a secret is set)."""
        return any(secrets.get(setting) for setting in self.auth.settings)

    @property
    def settings(self) -> tuple[str, ...]:
        """The environment variables holding this provider's secrets."""
        return (*self.auth.settings, *([self.handshake.setting] if self.handshake else []))


ZAPI_SCHEMAS = (
    ("ZapiStatusCallback", zapi.MessageStatusSchema),
    ("ZapiDeliveryCallback", zapi.DeliveryCallbackSchema),
)
REGISTRY: dict[str, ProviderRecord] = {
    record.name: record
    for record in (
        ProviderRecord(
            name="zapi",
            title="Z-API",
            parse=zapi.parse,
            auth=TokenAuth("ZAPI_WEBHOOK_TOKENS"),
            # Z-API's retries are undocumented; 422 tells a developer what is wrong.
            invalid_status=422,
            schemas=ZAPI_SCHEMAS,
            docs="https://developer.z-api.io/en/webhooks/on-whatsapp-message-status-changes",
        ),
        ProviderRecord(
            name="greenapi",
            title="Green-API",
            parse=greenapi.parse,
            auth=TokenAuth("GREENAPI_WEBHOOK_TOKENS"),
            # Green-API re-sends on anything but 200 and holds every later notification of
            # the instance behind it for up to 24 h.
            invalid_status=200,
            schemas=(("GreenApiStatusNotification", greenapi.OutgoingMessageStatusSchema),),
            docs="https://green-api.com/en/docs/api/receiving/notifications-format/outgoing-message/OutgoingMessageStatus/",
        ),
        ProviderRecord(
            name="plug",
            title="Plug",
            parse=plug.parse,
            auth=TokenAuth("PLUG_WEBHOOK_TOKENS"),
            invalid_status=422,
            schemas=ZAPI_SCHEMAS,
            docs="https://www.plugchat.com.br/",
        ),
        ProviderRecord(
            name="meta",
            title="Meta WhatsApp Cloud API",
            parse=meta.parse,
            auth=SignatureAuth(
                "META_APP_SECRETS", header="X-Hub-Signature-256", digest="sha256", prefix="sha256="
            ),
            # Meta re-sends anything not answered 200 for days and may disable the app's
            # subscription.
            invalid_status=200,
            schemas=(("MetaWebhook", meta.MetaWebhookSchema),),
            docs="https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components",
            handshake=Handshake("META_VERIFY_TOKENS"),
        ),
        ProviderRecord(
            name="evolution",
            title="Evolution API",
            parse=evolution.parse,
            # Its webhook config can send custom headers: Authorization or apikey.
            auth=TokenAuth("EVOLUTION_WEBHOOK_TOKENS", headers=("Authorization", "apikey")),
            # Evolution (2.3+) retries anything but 400/401/403/404/422 up to 10 times.
            invalid_status=422,
            schemas=(("EvolutionWebhook", evolution.EvolutionWebhookSchema),),
            docs="https://doc.evolution-api.com/v2/en/configuration/webhooks",
            event_suffix=True,
        ),
        ProviderRecord(
            name="waha",
            title="WAHA",
            parse=waha.parse,
            auth=EitherAuth(
                (
                    TokenAuth("WAHA_WEBHOOK_TOKENS", headers=()),
                    SignatureAuth("WAHA_HMAC_KEYS", header="X-Webhook-Hmac", digest="sha512"),
                )
            ),
            # WAHA retries every answer but 2xx (15 times, 2 s apart, by default).
            invalid_status=200,
            schemas=(("WahaWebhook", waha.WahaWebhookSchema),),
            docs="https://waha.devlike.pro/docs/how-to/events/",
        ),
        ProviderRecord(
            name="twilio",
            title="Twilio (WhatsApp sender)",
            parse=twilio.parse,
            auth=UrlSignatureAuth("TWILIO_AUTH_TOKENS"),
            # Twilio retries a status callback only when it cannot connect, by default.
            invalid_status=422,
            schemas=(("TwilioStatusCallback", twilio.TwilioStatusCallbackSchema),),
            docs="https://www.twilio.com/docs/messaging/guides/track-outbound-message-status",
            media_type=FORM,
        ),
    )
}
PROVIDERS = tuple(REGISTRY)


def providers() -> dict[str, Provider]:
    """Return the parser of every supported provider, by its URL name."""
    return {name: record.parse for name, record in REGISTRY.items()}
