"""Every provider Ticks takes callbacks from, one record each.

Configuration (which settings hold its secrets), the endpoint (how a callback proves its
sender, what an invalid body is answered), /openapi.json, `make run`'s printed URLs and the
parametrised tests all read these records. Adding a provider is one module in schemas/, one
record here, and fixtures in tests/fixtures/<name>/.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Iterable
from typing import Protocol

from marshmallow import Schema

from schemas import Provider, greenapi, meta, plug, zapi


class Headers(Protocol):
    """Request headers, case-insensitive (werkzeug's, or a dict in tests)."""

    def get(self, key: str) -> str | None: ...


def any_matches(given: bytes, accepted: Iterable[bytes]) -> bool:
    """Return whether ``given`` equals one of ``accepted``, comparing every one in full (so the
    time taken tells nothing about which, or how much, matched)."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(given, candidate)
    return found and bool(given)


@dataclasses.dataclass(frozen=True)
class TokenAuth:
    """A shared secret, as the URL's last segment or in ``Authorization`` (``<scheme> <token>``
    or bare). For providers that sign nothing: the URL is the secret."""

    setting: str
    in_path = True
    proof = "token"

    def verify(
        self,
        secrets: Iterable[str],
        *,
        token: str | None,
        headers: Headers,
        body: Callable[[], bytes],
    ) -> bool:
        """Return whether the request carries one of ``secrets``."""
        given = token if token is not None else header_token(headers.get("Authorization"))
        return any_matches((given or "").encode(), (secret.encode() for secret in secrets))


@dataclasses.dataclass(frozen=True)
class SignatureAuth:
    """An HMAC of the exact bytes received, in a header as ``<prefix><hex digest>``, keyed by
    one of the settings' secrets (several, so a secret can be rotated)."""

    setting: str
    header: str
    prefix: str
    digest: str
    in_path = False

    @property
    def proof(self) -> str:
        return f"{self.header} signature"

    def verify(
        self,
        secrets: Iterable[str],
        *,
        token: str | None,
        headers: Headers,
        body: Callable[[], bytes],
    ) -> bool:
        """Return whether the header is the HMAC of the body with one of ``secrets``."""
        given = (headers.get(self.header) or "").strip()
        if token is not None or not given.startswith(self.prefix):
            return False
        raw = body()
        expected = [
            (self.prefix + hmac.new(secret.encode(), raw, self.digest).hexdigest()).encode()
            for secret in secrets
        ]
        return any_matches(given.lower().encode(), expected)


def header_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization`` header: ``<scheme> <token>`` or a bare token."""
    parts = (authorization or "").split()
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[1]
    return None


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
    auth: TokenAuth | SignatureAuth
    # The answer to an authenticated body that does not validate (it is quarantined either
    # way). 200 where anything else makes the provider re-send it or hold what follows.
    invalid_status: int
    # The bodies it sends, for /openapi.json: (component name, schema).
    schemas: tuple[tuple[str, type[Schema]], ...]
    docs: str
    handshake: Handshake | None = None

    @property
    def settings(self) -> tuple[str, ...]:
        """The environment variables holding this provider's secrets."""
        return (self.auth.setting, *([self.handshake.setting] if self.handshake else []))


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
            docs="https://docs.plugchat.com.br/",
        ),
        ProviderRecord(
            name="meta",
            title="Meta WhatsApp Cloud API",
            parse=meta.parse,
            auth=SignatureAuth(
                "META_APP_SECRETS", header="X-Hub-Signature-256", prefix="sha256=", digest="sha256"
            ),
            # Meta re-sends anything not answered 200 for days and may disable the app's
            # subscription.
            invalid_status=200,
            schemas=(("MetaWebhook", meta.MetaWebhookSchema),),
            docs="https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components",
            handshake=Handshake("META_VERIFY_TOKENS"),
        ),
    )
}
PROVIDERS = tuple(REGISTRY)
