"""The webhook endpoint: every answer of the HTTP contract, and exactly what it enqueues."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import API_TOKEN, free_port, load_fixture, make_app, queued

ZAPI_URL = "/webhooks/zapi/zapi-secret-one"
GREEN_URL = "/webhooks/greenapi/green-secret"


def test_zapi_callback_is_accepted_and_enqueued(client, broker):
    response = client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    assert response.status_code == 200
    assert response.json == {"accepted": 1}
    [(task, events)] = queued(broker)
    assert task == "ticks.apply_events"
    assert events == [
        {
            "provider": "zapi",
            "message_id": "999999999999999999999",
            "status": "sent",
            "raw_status": "SENT",
            "occurred_at": "2021-09-21T14:30:45+00:00",
            "received_at": events[0]["received_at"],
            "phone": "5544999999999",
            "chat_id": "5544999999999",
            "chat_kind": "user",
            "is_group": False,
            "participant": None,
            "instance_id": "instance.id",
            "failure_reason": None,
            "request_id": events[0]["request_id"],
        }
    ]


def test_multi_id_callback_accepts_one_event_per_id(client, broker):
    response = client.post(ZAPI_URL, json=load_fixture("zapi", "multi_ids"))
    assert response.json == {"accepted": 3}
    [(_, events)] = queued(broker)
    assert [e["message_id"] for e in events] == [
        "3EB0A1B2C3D4E5F60001",
        "3EB0A1B2C3D4E5F60002",
        "3EB0A1B2C3D4E5F60003",
    ]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer zapi-secret-one",
        "Token zapi-secret-one",
        "zapi-secret-one",
        "Bearer zapi-secret-two",
    ],
)
def test_token_in_authorization_header(client, broker, header):
    response = client.post(
        "/webhooks/zapi", json=load_fixture("zapi", "seed_read"), headers={"Authorization": header}
    )
    assert response.status_code == 200
    assert len(queued(broker)) == 1


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/webhooks/zapi/wrong", {}),
        ("/webhooks/zapi/zapi-secret-on", {}),
        ("/webhooks/zapi/zapi-secret-one2", {}),
        ("/webhooks/zapi/ZAPI-SECRET-ONE", {}),
        ("/webhooks/zapi/green-secret", {}),
        ("/webhooks/zapi", {}),
        ("/webhooks/zapi", {"Authorization": ""}),
        ("/webhooks/zapi", {"Authorization": "Bearer"}),
        ("/webhooks/zapi", {"Authorization": "Bearer zapi-secret-one extra"}),
        ("/webhooks/zapi", {"Authorization": "Bearer wrong"}),
    ],
)
def test_missing_or_wrong_token_is_401_and_enqueues_nothing(client, broker, url, headers):
    response = client.post(url, json=load_fixture("zapi", "seed_sent"), headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "missing or invalid token"}
    assert queued(broker) == []


def test_unknown_provider_is_404(client):
    response = client.post("/webhooks/twilio/x", json={})
    assert response.status_code == 404
    assert response.json["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks//zapi-secret-one",
        "//webhooks/zapi/zapi-secret-one",
        "/webhooks/zapi//zapi-secret-one",
    ],
)
def test_doubled_slashes_are_a_json_404_not_a_redirect(client, broker, path):
    response = client.post(path, json=load_fixture("zapi", "seed_sent"))
    assert response.status_code == 404
    assert response.json["error"]
    assert queued(broker) == []


def test_provider_without_tokens_is_404(database_url, redis_url, broker):
    app = make_app(database_url, redis_url, PROVIDER_SECRETS={"ZAPI_WEBHOOK_TOKENS": ("t",)})
    response = app.test_client().post(
        "/webhooks/plug/anything", json=load_fixture("plug", "played_2025")
    )
    assert response.status_code == 404
    assert queued(broker) == []


def test_wrong_method_is_405_with_allow(client):
    response = client.get(ZAPI_URL)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.json == {"error": "method not allowed"}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_body_not_json_content_type_is_415(client, broker, content_type):
    response = client.post(ZAPI_URL, data=b'{"status": "SENT"}', content_type=content_type)
    assert response.status_code == 415
    assert "application/json" in response.json["error"]
    assert queued(broker) == []


def test_json_with_charset_is_accepted(client):
    body = b'{"status": "SENT", "ids": ["A"], "momment": 1632234645000}'
    response = client.post(ZAPI_URL, data=body, content_type="application/json; charset=utf-8")
    assert response.json == {"accepted": 1}


def test_oversized_body_is_413_and_enqueues_nothing(database_url, redis_url, broker):
    app = make_app(database_url, redis_url, MAX_BODY_BYTES=1024)
    body = load_fixture("zapi", "seed_sent") | {"padding": "x" * 2000}
    response = app.test_client().post(ZAPI_URL, json=body)
    assert response.status_code == 413
    assert response.json["error"]
    assert queued(broker) == []


@pytest.mark.parametrize(
    "body", [b"{", b"", b"not json", b'{"a": 1}}', b"[" * 50000, b"\xff\xfe\x00"]
)
def test_invalid_json_is_400(client, broker, body):
    response = client.post(ZAPI_URL, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json == {"error": "body is not valid JSON"}
    assert queued(broker) == []


def test_invalid_zapi_body_is_422_naming_the_field_and_quarantined(client, broker):
    body = load_fixture("zapi", "seed_sent") | {"status": "DELIVERED", "extra": 1}
    del body["ids"]
    response = client.post(ZAPI_URL, json=body)
    assert response.status_code == 422
    assert response.json["error"] == "invalid callback"
    assert set(response.json["errors"]) == {"ids", "status"}
    [(task, record)] = queued(broker)
    assert task == "ticks.quarantine"
    assert record["provider"] == "zapi"
    assert record["errors"] == response.json["errors"]
    assert '"extra": 1' in record["raw_body"]
    assert record["reason"] == "validation"


def test_invalid_list_item_error_names_its_index(client):
    body = load_fixture("zapi", "seed_sent") | {"ids": ["ok", 5.5]}
    response = client.post(ZAPI_URL, json=body)
    assert response.json["errors"] == {"ids": {"1": ["Must be a string."]}}


def test_invalid_green_api_body_is_answered_200_and_quarantined(client, broker):
    body = load_fixture("greenapi", "sent") | {"status": "teleported"}
    response = client.post(GREEN_URL, json=body)
    assert response.status_code == 200
    assert response.json["accepted"] == 0
    assert response.json["quarantined"] is True
    assert "status" in response.json["errors"]
    assert [task for task, _ in queued(broker)] == ["ticks.quarantine"]


@pytest.mark.parametrize(
    ("provider", "fixture", "kind"),
    [
        ("zapi", "other_type_received_callback", "ReceivedCallback"),
        ("greenapi", "other_type_incoming_message", "incomingMessageReceived"),
    ],
)
def test_other_webhook_types_are_answered_200_and_ignored(client, broker, provider, fixture, kind):
    token = {"zapi": "zapi-secret-one", "greenapi": "green-secret"}[provider]
    response = client.post(f"/webhooks/{provider}/{token}", json=load_fixture(provider, fixture))
    assert response.status_code == 200
    assert response.json == {"accepted": 0, "ignored": kind}
    assert queued(broker) == []


def test_unknown_fields_are_accepted(client, broker):
    response = client.post(GREEN_URL, json=load_fixture("greenapi", "unknown_fields"))
    assert response.json == {"accepted": 1}


def test_dead_broker_is_503_within_2_seconds(database_url):
    app = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    client = app.test_client()
    for _ in range(3):
        started = time.monotonic()
        response = client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
        assert time.monotonic() - started < 2
        assert response.status_code == 503
        assert response.json == {"error": "queue unavailable"}
        assert int(response.headers["Retry-After"]) > 0


def test_silent_broker_is_503_within_2_seconds(database_url):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        app = make_app(database_url, f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        started = time.monotonic()
        response = app.test_client().post(GREEN_URL, json=load_fixture("greenapi", "sent"))
        assert time.monotonic() - started < 2
        assert response.status_code == 503


def test_dead_broker_quarantine_is_503_not_200(database_url):
    """Even for Green-API, an invalid body that could not be kept is not acknowledged."""
    app = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().post(GREEN_URL, json={"typeWebhook": "outgoingMessageStatus"})
    assert response.status_code == 503


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_when_broker_and_database_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "broker": "ok", "database": "ok"}


def test_readyz_names_the_broker_when_it_is_down(database_url):
    app = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json["broker"] == "unavailable"
    assert response.json["database"] == "ok"
    assert "broker" in response.json["error"]


def test_readyz_is_503_while_redis_refuses_writes(client, broker):
    """A Redis at its maxmemory (noeviction) answers PING but refuses every publish: readiness
    once said ready while each callback was answered 503."""
    broker.config_set("maxmemory", 1)
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "refusing publishes" in response.json["error"]
        assert client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent")).status_code == 503
    finally:
        broker.config_set("maxmemory", 0)
    assert client.get("/readyz").status_code == 200


def test_readyz_stays_ready_when_only_the_database_is_down(redis_url, broker):
    """Callbacks are still accepted (the workers wait the outage out): the web stays in
    rotation, and says the database is down."""
    app = make_app(f"postgresql://127.0.0.1:{free_port()}/nowhere", redis_url)
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "broker": "ok", "database": "unavailable"}
    assert client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent")).status_code == 200


def test_missing_api_token_fails_at_start_up(database_url, redis_url):
    with pytest.raises(RuntimeError, match="API_TOKEN"):
        make_app(database_url, redis_url, API_TOKEN="")


def test_tokens_and_phones_never_reach_the_log(client, caplog):
    caplog.set_level("DEBUG")
    client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    client.post("/webhooks/zapi", json={"ids": []}, headers={"Authorization": "zapi-secret-two"})
    client.get("/messages/zapi/x", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert caplog.records
    for secret in ("zapi-secret-one", "zapi-secret-two", API_TOKEN, "5544999999999"):
        assert secret not in caplog.text


def test_every_configured_token_is_compared_in_full(monkeypatch):
    """No early exit: the time taken does not tell which token, or how much of one, matched."""
    import hmac

    from app import auth
    from schemas import proofs

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(proofs.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    assert auth.token_matches("first", ["first", "second", "third"])
    assert calls == [b"first", b"second", b"third"]


def test_a_bug_is_a_json_500_logged_without_the_token(client, caplog, monkeypatch):
    from app import webhooks

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(webhooks.PARSERS, "zapi", explode)
    response = client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    assert response.status_code == 500
    assert response.json == {"error": "internal error"}
    assert "unhandled error on POST /webhooks/<provider>/<token>" in caplog.text
    assert "zapi-secret-one" not in caplog.text


def test_answers_past_parsing_carry_the_request_id(client, database_url):
    accepted = client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    invalid = client.post(ZAPI_URL, json={"status": "SENT"})
    refused = client.post("/webhooks/zapi/wrong", json={})
    assert len(accepted.headers["X-Request-Id"]) == 32
    assert invalid.status_code == 422 and invalid.headers["X-Request-Id"]
    assert accepted.headers["X-Request-Id"] != invalid.headers["X-Request-Id"]
    assert "X-Request-Id" not in refused.headers
    dead = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    unavailable = dead.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    assert unavailable.status_code == 503 and unavailable.headers["X-Request-Id"]
