"""The OpenAPI 3 description of Ticks' HTTP API, built from its marshmallow schemas (apispec)
and served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app, jsonify

from app.version import __version__
from schemas import api
from schemas.fields import EpochTimestamp, Identifier, Text
from schemas.proofs import SignatureAuth, TokenAuth, UrlSignatureAuth, each
from schemas.registry import REGISTRY, ProviderRecord
from schemas.statuses import STATUSES

bp = Blueprint("openapi", __name__)
SPEC = "ticks.openapi"

JSON = "application/json"


def body(schema: str) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def answer(description: str, schema: str = "Error", **extra: Any) -> dict[str, Any]:
    return {"description": description, **body(schema), **extra}


ERRORS = {
    "400": answer("the body is not JSON"),
    "401": answer("missing or wrong token"),
    "404": answer("unknown provider, or one with no token configured"),
    "413": answer("body over MAX_BODY_BYTES"),
    "415": answer("body not application/json"),
    "503": answer(
        "the broker cannot take the event; send it again after Retry-After",
        headers={"Retry-After": {"schema": {"type": "integer"}}},
    ),
}
PROVIDER = {
    "name": "provider",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": list(REGISTRY)},
}


def webhook_answers(record: ProviderRecord) -> dict[str, Any]:
    """What a provider's POST is answered."""
    kept = "; an invalid body kept in quarantine (`quarantined`)"
    answers = {
        "200": answer(
            "enqueued (`accepted`), another webhook type (`ignored`)"
            + (kept if record.invalid_status == 200 else ""),
            "Accepted",
            headers={"X-Request-Id": {"schema": {"type": "string"}}},
        ),
        **ERRORS,
        "401": answer(f"missing or wrong {record.auth.proof}"),
        "404": answer(f"{' and '.join(record.auth.settings)}: not set"),
    }
    if record.invalid_status != 200:
        answers["422"] = answer("authenticated but invalid: the body is kept in quarantine")
    return answers


def webhook_body(record: ProviderRecord) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{name}"} for name, _ in record.schemas]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"required": True, "content": {record.media_type: {"schema": schema}}}


def webhook_paths(spec: APISpec, record: ProviderRecord) -> None:
    """A provider's operations: POST with each proof of origin it takes, its handshake GET."""
    post = {
        "tags": ["webhooks"],
        "description": f"{record.title} ({record.docs}).",
        "requestBody": webhook_body(record),
        "responses": webhook_answers(record),
    }
    path = f"/webhooks/{record.name}"
    proofs = each(record.auth)
    tokens = [proof for proof in proofs if isinstance(proof, TokenAuth)]
    signed = [proof for proof in proofs if isinstance(proof, (SignatureAuth, UrlSignatureAuth))]
    if tokens:
        token = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
        spec.path(
            f"{path}/{{token}}",
            operations={
                "post": {
                    **post,
                    "summary": f"{record.title} callback, the token in the path",
                    "parameters": [token],
                }
            },
        )
        if record.event_suffix:
            event = {
                "name": "event",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "the event name the provider adds after the URL it was given",
            }
            spec.path(
                f"{path}/{{token}}/{{event}}",
                operations={
                    "post": {
                        **post,
                        "summary": f"{record.title} callback, by event (webhook_by_events)",
                        "parameters": [token, event],
                    }
                },
            )
    operations: dict[str, Any] = {}
    headers = [header for proof in tokens for header in proof.headers]
    if signed or headers:
        operation: dict[str, Any] = {**post, "summary": f"{record.title} callback, signed"}
        if headers:
            operation["summary"] = f"{record.title} callback, the token in a header"
            operation["security"] = [
                {"bearer" if header == "Authorization" else header: []} for header in headers
            ]
        if signed:
            operation["parameters"] = [
                {
                    "name": proof.header,
                    "in": "header",
                    "required": not headers and len(signed) == 1,
                    "schema": {"type": "string"},
                    "description": proof.description,
                }
                for proof in signed
            ]
        operations["post"] = operation
    if record.handshake:
        operations["get"] = {
            "tags": ["webhooks"],
            "summary": f"{record.title} subscription check",
            "parameters": [
                {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}
                for name in ("hub.mode", "hub.verify_token", "hub.challenge")
            ],
            "responses": {
                "200": {
                    "description": "hub.challenge, echoed",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "400": answer("hub.mode is not subscribe, or no usable hub.challenge"),
                "403": answer(f"hub.verify_token is not one of {record.handshake.setting}"),
                "404": answer(
                    f"{record.handshake.setting} or {' / '.join(record.auth.settings)} is not"
                    " set (its POSTs could not be checked)"
                ),
            },
        }
    spec.path(path, operations=operations)


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
LISTING = [
    {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["pending", "all"]}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
]


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI document."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Ticks",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={
            "description": "WhatsApp message-status webhooks in ("
            + ", ".join(record.title for record in REGISTRY.values())
            + "); one truth per message out. Nothing is answered 2xx unless it is enqueued."
        },
    )
    plugin.map_to_openapi_type(EpochTimestamp, "integer", "int64")
    plugin.map_to_openapi_type(Identifier, "string", None)
    plugin.map_to_openapi_type(Text, "string", None)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    token_headers = {
        header
        for record in REGISTRY.values()
        for proof in each(record.auth)
        if isinstance(proof, TokenAuth)
        for header in proof.headers
    }
    for header in sorted(token_headers - {"Authorization"}):
        spec.components.security_scheme(header, {"type": "apiKey", "in": "header", "name": header})
    bodies = dict(item for record in REGISTRY.values() for item in record.schemas)
    for name, schema in bodies.items():
        spec.components.schema(name, schema=schema)
    for name in (
        "Accepted",
        "Error",
        "Message",
        "Change",
        "ChangePage",
        "Instance",
        "InstanceList",
        "InsightList",
        "MessageSummary",
        "MessagePage",
        "Health",
        "Ready",
        "Quarantined",
        "QuarantineList",
        "DeadLetter",
        "DeadLetterList",
        "ErasureRequest",
        "Erasure",
    ):
        spec.components.schema(name, schema=getattr(api, f"{name}Schema"))

    for record in REGISTRY.values():
        webhook_paths(spec, record)
    spec.path(
        "/messages/{provider}/{message_id}",
        operations={
            "get": {
                "summary": "A message's status, timestamps and history",
                "security": BEARER,
                "parameters": [
                    PROVIDER,
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": answer("the message", "Message"),
                    "401": ERRORS["401"],
                    "404": answer("no such message"),
                },
            }
        },
    )
    spec.path(
        "/messages",
        operations={
            "get": {
                "summary": "Messages matching filters, oldest first, a page at a time",
                "security": BEARER,
                "parameters": [
                    {"name": "provider", "in": "query", "schema": PROVIDER["schema"]},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(STATUSES)},
                    },
                    {"name": "instance_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "phone", "in": "query", "schema": {"type": "string"}},
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                            "description": description,
                        }
                        for name, description in (
                            ("since", "created at or after (ISO 8601 with an offset)"),
                            ("until", "created before (ISO 8601 with an offset)"),
                        )
                    ),
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "the next of the page before",
                    },
                ],
                "responses": {
                    "200": answer("a page of messages", "MessagePage"),
                    "400": answer("a bad filter, limit or cursor, named in errors"),
                    "401": ERRORS["401"],
                    "503": answer("the database is unavailable"),
                },
            }
        },
    )
    spec.path(
        "/instances",
        operations={
            "get": {
                "summary": "Each sending number, with its provider's last connection report",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "provider",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(REGISTRY)},
                    }
                ],
                "responses": {
                    "200": answer(
                        "instances with a connection report or a status applied", "InstanceList"
                    ),
                    "400": answer("an unknown provider, named in errors"),
                    "401": ERRORS["401"],
                    "503": answer("the database is unavailable"),
                },
            }
        },
    )
    spec.path(
        "/insights",
        operations={
            "get": {
                "summary": "Each sending number's delivery funnel over the messages sent",
                "security": BEARER,
                "parameters": [{"in": "query", "schema": api.InsightsQuerySchema}],
                "responses": {
                    "200": answer("one entry per instance (and bucket, when asked)", "InsightList"),
                    "400": answer("a bad parameter, named in errors"),
                    "401": ERRORS["401"],
                    "503": answer("the database is unavailable"),
                },
            }
        },
    )
    spec.path(
        "/changes",
        operations={
            "get": {
                "summary": "What took effect, in commit order, after a cursor",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "the `next` of the page before; 0 or none: the start",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 30},
                        "description": "seconds to wait for a first change (long poll)",
                    },
                ],
                "responses": {
                    "200": answer("changes, and the cursor to read on from", "ChangePage"),
                    "400": answer("a bad after, limit or wait, named in errors"),
                    "409": answer(
                        "after is past anything this feed gave (a restored database, another"
                        " installation's cursor): newest names the feed's newest cursor"
                    ),
                    "410": answer(
                        "after is older than changes retention removed: read again from 0"
                    ),
                    "401": ERRORS["401"],
                    "503": answer("the database is unavailable"),
                },
            }
        },
    )
    for path, listed, item, kind in (
        ("/quarantine", "QuarantineList", "Quarantined", "quarantined body"),
        ("/dead-letters", "DeadLetterList", "DeadLetter", "dead letter"),
    ):
        spec.path(
            path,
            operations={
                "get": {
                    "summary": f"Each {kind}, oldest first",
                    "security": BEARER,
                    "parameters": LISTING,
                    "responses": {
                        "200": answer(f"{kind}s", listed),
                        "400": answer("a bad state or limit, named in errors"),
                        "401": ERRORS["401"],
                    },
                }
            },
        )
        identified = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]
        spec.path(
            f"{path}/{{id}}",
            operations={
                "get": {
                    "summary": f"One {kind}, whole",
                    "security": BEARER,
                    "parameters": identified,
                    "responses": {
                        "200": answer(kind, item),
                        "401": ERRORS["401"],
                        "404": answer(f"no such {kind}"),
                    },
                }
            },
        )
        spec.path(
            f"{path}/{{id}}/discard",
            operations={
                "post": {
                    "summary": f"Take a {kind} off the pending list (the row is kept)",
                    "description": "Discarding again changes nothing (discarded_at stays).",
                    "security": BEARER,
                    "parameters": identified,
                    "responses": {
                        "200": answer(f"the {kind}, discarded", item),
                        "401": ERRORS["401"],
                        "404": answer(f"no such {kind}"),
                    },
                }
            },
        )
    spec.path(
        "/erasures",
        operations={
            "post": {
                "summary": "Erase everything kept about one phone number (LGPD, GDPR)",
                "security": BEARER,
                "requestBody": body("ErasureRequest"),
                "responses": {
                    "202": answer(
                        "queued: a worker erases it; GET its Location for the outcome",
                        "Erasure",
                        headers={"Location": {"schema": {"type": "string"}}},
                    ),
                    "400": answer("not a phone number, named in errors"),
                    "401": ERRORS["401"],
                    "503": answer("the database or the broker is unavailable"),
                },
            }
        },
    )
    spec.path(
        "/erasures/{id}",
        operations={
            "get": {
                "summary": "An erasure: pending, or done with what it removed and anonymised",
                "security": BEARER,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": answer("the erasure", "Erasure"),
                    "401": ERRORS["401"],
                    "404": answer("no such erasure"),
                    "503": answer("the database is unavailable"),
                },
            }
        },
    )
    spec.path(
        "/healthz",
        operations={"get": {"summary": "Liveness", "responses": {"200": answer("up", "Health")}}},
    )
    spec.path(
        "/readyz",
        operations={
            "get": {
                "summary": "Readiness: the broker takes messages (PostgreSQL's state in the body)",
                "responses": {
                    "200": answer("ready: callbacks are accepted", "Ready"),
                    "503": answer("the broker is unavailable", "Ready"),
                },
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics",
                "security": BEARER,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": ERRORS["401"],
                },
            }
        },
    )
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document (public: it holds no secret)."""
    document = current_app.extensions.get(SPEC)
    if document is None:
        document = current_app.extensions[SPEC] = build_spec()
    return jsonify(document)
