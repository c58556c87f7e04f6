"""Outbound HTTP for subscriptions: Standard Webhooks signatures, the guard against requests to
private addresses, and one POST.

Signatures follow the Standard Webhooks specification (standardwebhooks.com): the secret is
``whsec_`` + base64 of its key; ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of
"<webhook-id>.<webhook-timestamp>.<body>">``, several of them space-separated while a rotated
secret is still honoured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import urllib3

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
USER_AGENT = "Ticks-Webhooks/1"


def new_secret() -> str:
    """A fresh signing secret: whsec_ and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<signature>`` of one POST with one secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: one signature per secret in force, space-separated."""
    return " ".join(sign(key, webhook_id, timestamp, body) for key in keys)


def allow_private(env: Mapping[str, str] = os.environ) -> bool:
    """SUBSCRIPTIONS_ALLOW_PRIVATE: receivers on private and loopback addresses are allowed
    (a receiver on the same host or network); off by default."""
    return env.get("SUBSCRIPTIONS_ALLOW_PRIVATE", "").strip().lower() in ("1", "true", "yes")


# Connections are kept open between POSTs to the same receiver (keyed by the address checked,
# the port and the URL's host): no TCP or TLS handshake per change.
POOLS = urllib3.PoolManager(num_pools=200, maxsize=8, cert_reqs="CERT_REQUIRED")


class Refused(ValueError):
    """A subscription URL Ticks will not call."""


# IPv6 ranges that carry an IPv4 address a gateway may forward to (NAT64, 6to4, the old
# IPv4-compatible form): refused whole, whatever IPv4 address they embed.
EMBEDS_IPV4 = tuple(
    ipaddress.IPv6Network(network)
    for network in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96")
)


def is_public(address: str) -> bool:
    """True for an address on the public internet: not loopback, private, link-local (cloud
    metadata at 169.254.169.254), multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in network for network in EMBEDS_IPV4):  # may reach any IPv4 address
            return False
    return ip.is_global and not ip.is_multicast


def check_url(url: str) -> None:
    """Refuse a URL that is not http(s) with a host, before anything is resolved."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise Refused("has a port that is not a number") from None


def resolve(url: str, allow_private: bool) -> list[str]:
    """The addresses ``url``'s host resolves to, every one of them allowed, or Refused.

    A host with any private address is refused whole (a name that resolves to a public and a
    private address could be sent to either).
    """
    check_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    hostname = parts.hostname or ""
    try:  # an address needs no lookup
        literal = [str(ipaddress.ip_address(hostname.split("%", 1)[0]))]
    except ValueError:
        literal = []
    try:
        found = (
            [(0, 0, 0, "", (address, port)) for address in literal]
            if literal
            else socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"host {hostname} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not allow_private:
        private = [address for address in addresses if not is_public(address)]
        if private:
            raise Refused(
                f"resolves to a private or loopback address ({', '.join(private)}); "
                "set SUBSCRIPTIONS_ALLOW_PRIVATE=true to allow it, for the delivery worker "
                "too (in .env for make run)"
            )
    return addresses


def shown_url(url: str) -> str:
    """A URL for logs and pages: scheme, host and port; never credentials, a path or a query,
    any of which may hold a receiver's token (Slack's and Discord's are in the path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    rest = "/…" if parts.path.strip("/") or parts.query else "/"
    return f"{parts.scheme}://{host}{port}{rest}"


@dataclass(frozen=True)
class Answer:
    """What one POST came to: a status (None when no answer came) and, if it failed, why."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (a date is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> Answer:
    """POST ``body`` to ``url`` once; never follows a redirect.

    The host is resolved and checked here, at every attempt, and the connection is made to the
    address checked (with the URL's host in Host and in TLS' SNI and certificate check), so a
    name that changes its answer between the check and the connection (DNS rebinding) cannot
    reach a private address.
    """
    try:
        addresses = resolve(url, allow_private)
    except Refused as exc:
        return Answer(None, f"refused: {exc}")
    parts = urlsplit(url)
    try:  # an internationalised name goes out as the DNS knows it (punycode)
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        return Answer(None, "refused: the host name is not a valid internationalised name")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers = {**headers, "Authorization": "Basic " + base64.b64encode(credentials).decode()}
    pool = POOLS.connection_from_host(
        addresses[0],
        port,
        parts.scheme,
        pool_kwargs={"server_hostname": host, "assert_hostname": host}
        if parts.scheme == "https"
        else None,
    )
    try:
        response = pool.urlopen(
            "POST",
            path,
            body=body,
            headers={
                "Host": host_header,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **headers,
            },
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
            preload_content=False,
        )
        try:
            response.read(65536, decode_content=False)  # a little of it; the rest is dropped
        finally:
            response.release_conn()
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:  # never the task's end
        return Answer(None, f"{type(exc).__name__}: {exc}"[:300])
    if 200 <= response.status < 300:
        return Answer(response.status)
    return Answer(
        response.status,
        f"HTTP {response.status}",
        retry_after(response.headers.get("Retry-After")),
    )
