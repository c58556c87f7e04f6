"""/openapi.json describes the API as it answers: schemathesis generates requests from it and
checks every answer against it (status codes, content types, bodies), on real servers."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import API_TOKEN, WEBHOOK_TOKENS

EXAMPLES = int(os.environ.get("TICKS_OPENAPI_EXAMPLES", "25"))


def test_the_document_is_served_and_names_every_endpoint(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {
        "/webhooks/zapi/{token}",
        "/webhooks/zapi",
        "/webhooks/greenapi/{token}",
        "/webhooks/plug/{token}",
        "/webhooks/meta",
        "/messages/{provider}/{message_id}",
        "/quarantine",
        "/dead-letters",
        "/quarantine/{id}/discard",
        "/dead-letters/{id}/discard",
        "/erasures",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    schemas = document["components"]["schemas"]
    assert "READ-SELF" in schemas["ZapiStatusCallback"]["properties"]["status"]["enum"]
    assert "error" in schemas["ZapiDeliveryCallback"]["properties"]
    assert "failed" in schemas["MetaStatus"]["properties"]["status"]["enum"]
    meta = document["paths"]["/webhooks/meta"]
    assert meta["post"]["parameters"][0]["name"] == "X-Hub-Signature-256"
    assert {p["name"] for p in meta["get"]["parameters"]} == {
        "hub.mode",
        "hub.verify_token",
        "hub.challenge",
    }
    assert "422" not in meta["post"]["responses"]  # Meta's invalid bodies are answered 200


def authorize(case) -> None:
    """Give each generated request the credentials its endpoint takes."""
    if case.path.startswith("/webhooks/"):
        # Signed providers get no valid signature: their 401 is checked against the document.
        token = WEBHOOK_TOKENS[case.path.split("/")[2]][0]
        if "token" in (case.path_parameters or {}):
            case.path_parameters["token"] = token
        else:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    else:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_TOKEN}"}
    if case.path == "/changes" and isinstance((case.query or {}).get("wait"), (int, float)):
        case.query["wait"] = min(case.query["wait"], 0.1)  # a long poll's answer, not its wait


def test_every_answer_matches_the_document(app):
    # schemathesis' pytest plugin does not run under pytest 9: its hypothesis strategies do.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 30
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            authorize(case)
            response = case.call()
            assert response.status_code < 500 or (
                response.status_code == 503 and "/webhooks/" in case.path
            ), (case.path, response.status_code)
            case.validate_response(
                response,
                checks=[
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        check()
