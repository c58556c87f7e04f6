"""The OpenAPI 3 description of Ticks' HTTP API, built from its marshmallow schemas (apispec)
and served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app, jsonify

from app.config import PROVIDERS
from schemas import api
from schemas.fields import EpochTimestamp, Identifier, Text
from schemas.greenapi import OutgoingMessageStatusSchema
from schemas.zapi import MessageStatusSchema

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
WEBHOOK_ANSWERS = {
    "200": answer(
        "enqueued (`accepted`), another webhook type (`ignored`), or, for greenapi only, an "
        "invalid body kept in quarantine (`quarantined`)",
        "Accepted",
        headers={"X-Request-Id": {"schema": {"type": "string"}}},
    ),
    "422": answer("authenticated but invalid: the body is kept in quarantine"),
    **ERRORS,
}
WEBHOOK_BODY = {
    "required": True,
    "content": {
        JSON: {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/ZapiStatusCallback"},
                    {"$ref": "#/components/schemas/GreenApiStatusNotification"},
                ]
            }
        }
    },
}
PROVIDER = {
    "name": "provider",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": list(PROVIDERS)},
    "description": "zapi and plug send Z-API style bodies; greenapi its own",
}
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
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={
            "description": "WhatsApp message-status webhooks in (Z-API, Green-API, Plug); one "
            "truth per message out. Nothing is answered 2xx unless it is enqueued."
        },
    )
    plugin.map_to_openapi_type(EpochTimestamp, "integer", "int64")
    plugin.map_to_openapi_type(Identifier, "string", None)
    plugin.map_to_openapi_type(Text, "string", None)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("ZapiStatusCallback", schema=MessageStatusSchema)
    spec.components.schema("GreenApiStatusNotification", schema=OutgoingMessageStatusSchema)
    for name in (
        "Accepted",
        "Error",
        "Message",
        "Health",
        "Ready",
        "Quarantined",
        "QuarantineList",
        "DeadLetter",
        "DeadLetterList",
    ):
        spec.components.schema(name, schema=getattr(api, f"{name}Schema"))

    spec.path(
        "/webhooks/{provider}/{token}",
        operations={
            "post": {
                "summary": "A provider's status callback, the token in the path",
                "parameters": [
                    PROVIDER,
                    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "requestBody": WEBHOOK_BODY,
                "responses": WEBHOOK_ANSWERS,
            }
        },
    )
    spec.path(
        "/webhooks/{provider}",
        operations={
            "post": {
                "summary": "A provider's status callback, the token in Authorization",
                "parameters": [PROVIDER],
                "security": BEARER,
                "requestBody": WEBHOOK_BODY,
                "responses": WEBHOOK_ANSWERS,
            }
        },
    )
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
        spec.path(
            f"{path}/{{id}}",
            operations={
                "get": {
                    "summary": f"One {kind}, whole",
                    "security": BEARER,
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": answer(kind, item),
                        "401": ERRORS["401"],
                        "404": answer(f"no such {kind}"),
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
