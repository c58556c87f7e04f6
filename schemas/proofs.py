"""How a callback proves which provider sent it: a shared token, or a signature. Pure: the
endpoint hands over what it received, and the settings' secrets, by setting name.

Every comparison is in constant time and goes through every accepted secret in full, so the
time taken tells nothing about which secret, or how much of one, matched.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

Secrets = Mapping[str, Sequence[str]]  # setting name -> its secrets


class Headers(Protocol):
    """Request headers, case-insensitive (werkzeug's, or a dict in tests)."""

    def get(self, key: str) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class Callback:
    """What a proof may look at, read only when it is asked for."""

    token: str | None  # the URL's last segment, if the URL had one
    headers: Headers
    body: Callable[[], bytes]  # the exact bytes received
    url: Callable[[], str] = str  # the URL the provider called (PUBLIC_URL behind a proxy)
    form: Callable[[], Sequence[tuple[str, str]]] = tuple  # a form body's fields, in order


def any_matches(given: bytes, accepted: Iterable[bytes]) -> bool:
    """Return whether ``given`` equals one of ``accepted``, comparing every one in full."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(given, candidate)
    return found and bool(given)


def header_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization`` header: ``<scheme> <token>`` or a bare token."""
    parts = (authorization or "").split()
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[1]
    return None


class Proof(Protocol):
    """One way a provider proves a callback is its own."""

    @property
    def settings(self) -> tuple[str, ...]: ...

    @property
    def in_path(self) -> bool: ...

    @property
    def proof(self) -> str: ...

    def verify(self, secrets: Secrets, callback: Callback) -> bool: ...


@dataclasses.dataclass(frozen=True)
class TokenAuth:
    """A shared secret, as the URL's last segment or in a header (``Authorization`` as
    ``<scheme> <token>`` or bare; other headers as the bare token). For providers that sign
    nothing: the URL, or the header, is the secret."""

    setting: str
    headers: tuple[str, ...] = ("Authorization",)
    in_path = True
    proof = "token"

    @property
    def settings(self) -> tuple[str, ...]:
        return (self.setting,)

    def verify(self, secrets: Secrets, callback: Callback) -> bool:
        accepted = [secret.encode() for secret in secrets.get(self.setting, ())]
        if callback.token is not None:
            return any_matches(callback.token.encode(), accepted)
        found = False
        for name in self.headers:
            value = callback.headers.get(name)
            given = header_token(value) if name.lower() == "authorization" else value
            found |= any_matches((given or "").strip().encode(), accepted)
        return found


@dataclasses.dataclass(frozen=True)
class HeaderSignature:
    """A signature in a header, keyed by one of a setting's secrets (several, so a secret can
    be rotated)."""

    setting: str
    header: str
    in_path = False

    @property
    def settings(self) -> tuple[str, ...]:
        return (self.setting,)

    @property
    def proof(self) -> str:
        return f"{self.header} signature"


@dataclasses.dataclass(frozen=True)
class SignatureAuth(HeaderSignature):
    """An HMAC of the exact bytes received, in a header as ``<prefix><hex digest>``."""

    digest: str = "sha256"
    prefix: str = ""

    @property
    def description(self) -> str:
        return (
            f"{self.prefix}<hex HMAC-{self.digest.upper()} of the raw body with one of "
            f"{self.setting}>"
        )

    def verify(self, secrets: Secrets, callback: Callback) -> bool:
        given = (callback.headers.get(self.header) or "").strip()
        if callback.token is not None or not given.startswith(self.prefix):
            return False
        raw = callback.body()
        expected = [
            (self.prefix + hmac.new(secret.encode(), raw, self.digest).hexdigest()).encode()
            for secret in secrets.get(self.setting, ())
        ]
        return any_matches(given.lower().encode(), expected)


@dataclasses.dataclass(frozen=True)
class EitherAuth:
    """Any one of several proofs (WAHA: a token in the URL, or an HMAC of the body)."""

    proofs: tuple[TokenAuth | SignatureAuth | UrlSignatureAuth, ...]

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(setting for proof in self.proofs for setting in proof.settings)

    @property
    def in_path(self) -> bool:
        return any(proof.in_path for proof in self.proofs)

    @property
    def proof(self) -> str:
        return " or ".join(proof.proof for proof in self.proofs)

    def verify(self, secrets: Secrets, callback: Callback) -> bool:
        results = [proof.verify(secrets, callback) for proof in self.proofs]
        return any(results)


def url_signature(secret: str, url: str, fields: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by each POST field's
    name and value, by name, a repeated field's distinct values sorted
    (twilio-python's RequestValidator.compute_signature)."""
    data = url + "".join(name + value for name, value in sorted(set(fields)))
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), "sha1").digest()).decode()


def with_and_without_port(url: str) -> list[str]:
    """The URL as given, with its scheme's default port and without any port: Twilio's own
    validator accepts each, its signing being "inconsistent" about ports."""
    parts = urlsplit(url)
    if not parts.hostname:
        return [url]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"https": 443, "http": 80}.get(parts.scheme)
    urls = [url, urlunsplit(parts._replace(netloc=host))]
    if default:
        urls.append(urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}")))
    return list(dict.fromkeys(urls))


@dataclasses.dataclass(frozen=True)
class UrlSignatureAuth(HeaderSignature):
    """Twilio's signature: over the URL it called and the form's fields, keyed by the
    account's auth token."""

    header: str = "X-Twilio-Signature"

    @property
    def description(self) -> str:
        return (
            "<base64 HMAC-SHA1, with one of "
            f"{self.setting}, of the URL called followed by each field's name and value>"
        )

    def verify(self, secrets: Secrets, callback: Callback) -> bool:
        given = (callback.headers.get(self.header) or "").strip()
        if callback.token is not None or not given:
            return False
        fields = list(callback.form())
        expected = [
            url_signature(secret, url, fields).encode()
            for secret in secrets.get(self.setting, ())
            for url in with_and_without_port(callback.url())
        ]
        return any_matches(given.encode(), expected)


def each(proof: Proof) -> tuple[Proof, ...]:
    """The single proofs a proof accepts (an EitherAuth's, or itself)."""
    return proof.proofs if isinstance(proof, EitherAuth) else (proof,)
