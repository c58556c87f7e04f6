"""Evolution API, WAHA and Twilio: parsing, how each proves a callback is its own, and what
each is answered."""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from marshmallow import ValidationError

from schemas.proofs import url_signature
from schemas.registry import FORM, REGISTRY
from tests.conftest import (
    WEBHOOK_TOKENS,
    load_fixture,
    make_app,
    queued,
    signed_post,
)
from workers.core import store
from workers.core.store import Outcome

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def parse(provider, body):
    return REGISTRY[provider].parse(body, received_at=NOW, request_id="req-1")


def one(provider, body):
    parsed = parse(provider, body)
    assert parsed.ignored is None, parsed.ignored
    [event] = parsed.events
    return event


# --- Evolution API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("ERROR", "failed"),
        ("PENDING", "pending"),
        ("SERVER_ACK", "sent"),
        ("DELIVERY_ACK", "received"),
        ("READ", "read"),
        ("PLAYED", "played"),
        (0, "failed"),
        (1, "pending"),
        (2, "sent"),
        (3, "received"),
        (4, "read"),
        (5, "played"),
        ("DELIVERED", "received"),  # its Cloud API channel
        ("FAILED", "failed"),
    ],
)
def test_evolution_string_and_numeric_statuses(raw, status):
    body = load_fixture("evolution", "v2_delivery_ack")
    body["data"]["status"] = raw
    event = one("evolution", body)
    assert event.status == status
    assert event.failure_reason == (event.raw_status if status == "failed" else None)


def test_evolution_v2_fields_become_the_event():
    event = one("evolution", load_fixture("evolution", "v2_read"))
    # keyId is WhatsApp's id; messageId is Evolution's database row, never used
    assert event.message_id == "3EB0B430B6F8F1D0E053AC120E0A9E5C"
    assert (event.status, event.raw_status, event.instance_id) == ("read", "READ", "loja-centro")
    assert (event.phone, event.chat_kind, event.participant) == ("5544999999999", "user", None)
    assert event.occurred_at == NOW  # date_time is the server's local clock: not trusted


def test_evolution_v1_uses_id_and_its_datetime():
    event = one("evolution", load_fixture("evolution", "v1_read"))
    assert event.message_id == "3EB0B430B6F8F1D0E053AC120E0A9E5E"
    assert event.occurred_at == datetime.fromtimestamp(1732280000, UTC)


def test_evolution_event_spelled_as_in_its_configuration_is_accepted():
    assert one("evolution", load_fixture("evolution", "config_name_event")).status == "read"


def test_evolution_group_receipt_names_its_participant():
    event = one("evolution", load_fixture("evolution", "group_read_participant"))
    assert (event.chat_kind, event.participant) == ("group", "5544988887777@s.whatsapp.net")


def test_evolution_participant_that_is_the_chat_itself_is_no_participant():
    """2.2.0-2.3.4 sent remoteJid as participant, one-to-one chats included."""
    assert (
        one("evolution", load_fixture("evolution", "participant_is_remote_jid")).participant is None
    )


def test_evolution_read_of_a_received_message_is_read_by_me():
    assert (
        one("evolution", load_fixture("evolution", "received_message_read")).status == "read_by_me"
    )


@pytest.mark.parametrize(
    ("fixture", "ignored"),
    [
        ("other_type_messages_upsert", "messages.upsert"),
        ("other_type_deleted_edit", "messages.update DELETED"),
        ("other_type_received_message_ack", "messages.update of a received message"),
    ],
)
def test_evolution_other_events_are_ignored(fixture, ignored):
    assert parse("evolution", load_fixture("evolution", fixture)).ignored == ignored


def test_evolution_update_without_status_is_an_edit_and_ignored():
    body = load_fixture("evolution", "v2_read")
    del body["data"]["status"]
    assert parse("evolution", body).ignored == "messages.update without status"


@pytest.mark.parametrize("raw", ["DELIVERED_ACK", 6, -1, True, "read-ish"])
def test_evolution_unknown_status_is_invalid_naming_it(raw):
    body = load_fixture("evolution", "v2_read")
    body["data"]["status"] = raw
    with pytest.raises(ValidationError) as err:
        parse("evolution", body)
    assert "status" in err.value.messages["data"]


def test_evolution_update_without_an_id_is_invalid():
    body = load_fixture("evolution", "v2_read")
    del body["data"]["keyId"]
    with pytest.raises(ValidationError) as err:
        parse("evolution", body)
    assert "keyId" in err.value.messages["data"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/evolution/evolution-token", {}),
        ("/webhooks/evolution/evolution-token/messages-update", {}),  # webhook_by_events
        ("/webhooks/evolution", {"apikey": "evolution-token"}),
        ("/webhooks/evolution", {"Authorization": "Bearer evolution-token"}),
    ],
)
def test_evolution_token_in_the_url_or_a_header(client, broker, path, headers):
    response = client.post(path, json=load_fixture("evolution", "v2_read"), headers=headers)
    assert response.status_code == 200
    assert response.json == {"accepted": 1}
    assert len(queued(broker)) == 1


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/webhooks/evolution/wrong", {}, 401),
        ("/webhooks/evolution", {"apikey": "wrong"}, 401),
        ("/webhooks/evolution", {}, 401),
        ("/webhooks/zapi/zapi-secret-one/messages-update", {}, 404),  # only Evolution adds one
    ],
)
def test_evolution_without_its_token_is_refused(client, broker, path, headers, code):
    response = client.post(path, json=load_fixture("evolution", "v2_read"), headers=headers)
    assert response.status_code == code
    assert queued(broker) == []


def test_evolution_invalid_body_is_422_and_quarantined(client, broker):
    body = load_fixture("evolution", "v2_read")
    body["data"]["status"] = "DELIVERED_ACK"
    response = signed_post(client, "evolution", body)
    assert response.status_code == 422  # Evolution does not retry a 422
    assert "status" in response.json["errors"]["data"]
    assert [task for task, _ in queued(broker)] == ["ticks.quarantine"]


# --- WAHA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status"),
    [
        ("ack_error", "failed"),
        ("ack_pending", "pending"),
        ("ack_server", "sent"),
        ("ack_device", "received"),
        ("ack_read", "read"),
        ("ack_played", "played"),
    ],
)
def test_waha_ack_mapping(fixture, status):
    event = one("waha", load_fixture("waha", fixture))
    assert event.status == status
    assert event.message_id == "true_5544999999999@c.us_4CC5EDD64BC22EBA6D639F2AF571346C"
    assert (event.instance_id, event.phone, event.chat_kind) == ("default", "5544999999999", "user")
    assert event.occurred_at == datetime.fromtimestamp(1732280000, UTC)


def test_waha_ack_name_alone_is_enough():
    body = load_fixture("waha", "ack_read")
    del body["payload"]["ack"]
    assert one("waha", body).status == "read"


def test_waha_without_envelope_timestamp_happened_when_received():
    assert one("waha", load_fixture("waha", "docs_minimal_read")).occurred_at == NOW


def test_waha_group_ack_lands_on_the_message_with_its_participant():
    event = one("waha", load_fixture("waha", "group_read"))
    assert event.message_id == "true_120363019502650977@g.us_4CC5EDD64BC22EBA6D639F2AF571346D"
    assert (event.chat_kind, event.participant, event.phone) == ("group", "9999@lid", None)


@pytest.mark.parametrize(
    ("fixture", "ignored"),
    [
        ("other_type_message", "message"),
        ("other_type_received_message_ack", "message.ack of a received message"),
    ],
)
def test_waha_other_events_are_ignored(fixture, ignored):
    assert parse("waha", load_fixture("waha", fixture)).ignored == ignored


@pytest.mark.parametrize("change", [{"ack": 5}, {"ack": "3"}, {"ack": None, "ackName": "UNKNOWN"}])
def test_waha_unknown_ack_is_invalid(change):
    body = load_fixture("waha", "ack_read")
    body["payload"].update(change)
    with pytest.raises(ValidationError) as err:
        parse("waha", body)
    assert "payload" in err.value.messages


def waha_post(client, body, key="waha-hmac-key", raw=None, **headers):
    raw = raw if raw is not None else json.dumps(body).encode()
    digest = hmac.new(key.encode(), raw, "sha512").hexdigest()
    return client.post(
        "/webhooks/waha",
        data=raw,
        content_type="application/json",
        headers={"X-Webhook-Hmac": digest, "X-Webhook-Hmac-Algorithm": "sha512", **headers},
    )


def test_waha_signed_by_hmac_is_accepted(client, broker):
    response = waha_post(client, load_fixture("waha", "ack_read"))
    assert response.status_code == 200
    assert response.json == {"accepted": 1}
    assert len(queued(broker)) == 1


def test_waha_with_a_wrong_hmac_is_401_and_enqueues_nothing(client, broker):
    body = load_fixture("waha", "ack_read")
    raw = json.dumps(body).encode()
    for response in (
        waha_post(client, body, key="not-the-key"),
        client.post(
            "/webhooks/waha",
            data=raw + b" ",  # signed, then altered
            content_type="application/json",
            headers={"X-Webhook-Hmac": hmac.new(b"waha-hmac-key", raw, "sha512").hexdigest()},
        ),
        client.post("/webhooks/waha", data=raw, content_type="application/json"),  # unsigned
    ):
        assert response.status_code == 401
        assert "X-Webhook-Hmac" in response.json["error"]
    assert queued(broker) == []


def test_waha_token_in_the_url_is_accepted_too(client, broker):
    assert signed_post(client, "waha", load_fixture("waha", "ack_read")).json == {"accepted": 1}
    assert client.post("/webhooks/waha/wrong", json={}).status_code == 401


def test_waha_invalid_body_is_answered_200_and_quarantined(client, broker):
    body = load_fixture("waha", "ack_read")
    body["payload"]["ack"] = 9
    response = waha_post(client, body)
    assert response.status_code == 200  # WAHA retries anything else
    assert response.json["quarantined"] is True
    assert [task for task, _ in queued(broker)] == ["ticks.quarantine"]


def test_waha_hmac_alone_configured_is_enough(database_url, redis_url, broker):
    client = make_app(
        database_url, redis_url, PROVIDER_SECRETS={"WAHA_HMAC_KEYS": ("waha-hmac-key",)}
    ).test_client()
    assert waha_post(client, load_fixture("waha", "ack_read")).status_code == 200
    assert client.post("/webhooks/waha/waha-token", json={}).status_code == 401


# --- Twilio ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status"),
    [
        ("queued", "pending"),
        ("sent", "sent"),
        ("delivered", "received"),
        ("read", "read"),
        ("failed", "failed"),
        ("undelivered", "failed"),
    ],
)
def test_twilio_status_mapping(fixture, status):
    event = one("twilio", load_fixture("twilio", fixture))
    assert (event.message_id, event.status) == ("SM1f0e8ae6ade43cb3c0ce4525424e404f", status)
    assert (event.phone, event.chat_kind, event.instance_id) == (
        "5544999999999",
        "user",
        "+14155238886",
    )
    assert event.occurred_at == event.received_at == NOW  # Twilio sends no event time


def test_twilio_failure_reason_names_the_error():
    assert one("twilio", load_fixture("twilio", "failed")).failure_reason == (
        "failed: 63016 Failed to send freeform message because you are outside the allowed window."
    )
    assert one("twilio", load_fixture("twilio", "undelivered")).failure_reason == (
        "undelivered: 63024"
    )


def test_twilio_inbound_message_status_is_ignored():
    ignored = parse("twilio", load_fixture("twilio", "other_type_inbound_received")).ignored
    assert ignored == "inbound message (received)"


def test_twilio_signature_is_twilios():
    """The example of Twilio's webhooks security page, as twilio-python computes it."""
    fields = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert url_signature("12345", url, fields) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert url_signature("12345", url, [*fields[1:], ("CallSid", "CA0")]) != (
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    )


def twilio_post(client, fields, signed_url="http://localhost/webhooks/twilio", signed=None):
    """POST a form to /webhooks/twilio signed over ``signed_url`` and the ``signed`` fields
    (those sent, unless given)."""
    token = WEBHOOK_TOKENS["twilio"][1]
    signature = url_signature(token, signed_url, (signed or fields).items())
    return client.post(
        "/webhooks/twilio",
        data=urlencode(fields),
        content_type=FORM,
        headers={"X-Twilio-Signature": signature},
    )


def test_twilio_signed_form_is_accepted(client, broker):
    response = signed_post(client, "twilio", load_fixture("twilio", "read"))
    assert response.status_code == 200
    assert response.json == {"accepted": 1}
    [(_task, [event])] = queued(broker)
    assert (event["message_id"], event["status"]) == ("SM1f0e8ae6ade43cb3c0ce4525424e404f", "read")


def test_twilio_new_parameters_are_accepted_and_count_in_the_signature(client, broker):
    body = {**load_fixture("twilio", "read"), "SomethingNew": "2027"}
    assert signed_post(client, "twilio", body).status_code == 200


def test_twilio_parameters_altered_after_signing_are_401(client, broker):
    body = load_fixture("twilio", "delivered")
    response = twilio_post(client, {**body, "MessageStatus": "read"}, signed=body)
    assert response.status_code == 401
    assert queued(broker) == []


def test_twilio_signature_over_another_url_is_401(client, broker):
    body = load_fixture("twilio", "read")
    assert twilio_post(client, body, "http://localhost/elsewhere").status_code == 401
    assert twilio_post(client, body).status_code == 200


@pytest.mark.parametrize(
    "signed_url",
    [
        "https://ticks.example.com/webhooks/twilio",
        "https://ticks.example.com:443/webhooks/twilio",  # Twilio is not consistent about ports
    ],
)
def test_twilio_behind_a_proxy_checks_the_public_url(database_url, redis_url, broker, signed_url):
    client = make_app(
        database_url,
        redis_url,
        PUBLIC_URL="https://ticks.example.com",
        PROVIDER_SECRETS={"TWILIO_AUTH_TOKENS": WEBHOOK_TOKENS["twilio"]},
    ).test_client()
    body = load_fixture("twilio", "read")
    assert twilio_post(client, body, signed_url).status_code == 200
    # what the proxy's own address would give is refused
    assert twilio_post(client, body).status_code == 401


def test_twilio_json_is_415_and_a_token_path_404(client, broker):
    assert client.post("/webhooks/twilio", json={}).status_code in (401, 415)
    response = signed_post(client, "twilio", load_fixture("twilio", "read"))
    assert response.status_code == 200
    assert client.post("/webhooks/twilio/twilio-auth-token", data="a=b").status_code == 404


def test_twilio_invalid_status_is_422_and_quarantined_and_replays(app, client, broker, db):
    body = {**load_fixture("twilio", "read"), "MessageStatus": "partially_delivered"}
    response = signed_post(client, "twilio", body)
    assert response.status_code == 422  # Twilio does not retry a 4xx by default
    assert "MessageStatus" in response.json["errors"]
    [(task, record)] = queued(broker)
    assert task == "ticks.quarantine"
    assert record["content_type"] == FORM
    store.record_quarantine(db, {**record, "raw_body": urlencode(load_fixture("twilio", "read"))})
    result = app.test_cli_runner().invoke(args=["quarantine", "replay", "--all"])
    assert "replayed: 1 events enqueued" in result.output, result.output


# --- pending ---------------------------------------------------------------------------------


def test_pending_is_history_and_never_a_status(db):
    pending = one("twilio", load_fixture("twilio", "queued"))
    sent = one("twilio", load_fixture("twilio", "sent"))
    later = one("twilio", load_fixture("twilio", "queued"))
    assert store.apply_events(db, [pending]) == {Outcome.PENDING: 1}
    assert store.apply_events(db, [sent]) == {Outcome.APPLIED: 1}
    assert store.apply_events(db, [later]) == {Outcome.DUPLICATE: 1}
    db.commit()
    message = store.fetch_message(db, "twilio", pending.message_id)
    assert message["status"] == "sent"
    assert [(e["status"], e["applied"]) for e in message["events"]] == [
        ("pending", False),
        ("sent", True),
    ]
    counts = store.fetch_overview(db)["counts"]
    assert ("twilio", "pending") not in counts


def test_a_pending_participant_receipt_is_no_receipt(db):
    event = one("waha", load_fixture("waha", "group_read"))
    pending = type(event)(**{**event.__dict__, "status": "pending", "raw_status": "PENDING"})
    store.apply_events(db, [pending])
    db.commit()
    assert store.fetch_message(db, "waha", event.message_id)["receipts"] is None


def test_secrets_of_every_gateway_come_from_their_settings():
    assert {s for name in ("evolution", "waha", "twilio") for s in REGISTRY[name].settings} == {
        "EVOLUTION_WEBHOOK_TOKENS",
        "WAHA_WEBHOOK_TOKENS",
        "WAHA_HMAC_KEYS",
        "TWILIO_AUTH_TOKENS",
    }


# --- found in review: each of these failed before its fix ----------------------------------


@pytest.mark.parametrize(
    "body",
    [{"data": {"keyId": "x"}}, {"data": {"keyId": "x", "status": "DELETED"}}, {"data": []}],
)
def test_evolution_body_without_an_event_is_never_a_500(client, broker, body):
    response = signed_post(client, "evolution", body)
    assert response.status_code in (200, 422)


def test_evolution_token_in_a_header_with_webhook_by_events(client, broker):
    """byEvents adds /messages-update to /webhooks/evolution: that is no token."""
    response = client.post(
        "/webhooks/evolution/messages-update",
        json=load_fixture("evolution", "v2_read"),
        headers={"apikey": "evolution-token"},
    )
    assert response.json == {"accepted": 1}
    wrong = client.post(
        "/webhooks/evolution/messages-update",
        json=load_fixture("evolution", "v2_read"),
        headers={"apikey": "wrong"},
    )
    assert wrong.status_code == 401


def test_waha_one_to_one_id_is_kept_whole():
    body = load_fixture("waha", "ack_read")
    body["payload"]["id"] = "true_5544999999999@c.us_ABC_DEF"
    assert one("waha", body).message_id == "true_5544999999999@c.us_ABC_DEF"


def test_twilio_without_public_url_refuses_to_start(database_url, redis_url):
    with pytest.raises(RuntimeError, match="PUBLIC_URL"):
        make_app(
            database_url,
            redis_url,
            PUBLIC_URL="",
            PROVIDER_SECRETS={"TWILIO_AUTH_TOKENS": ("t",)},
        )


def test_phones_inside_message_ids_stay_out_of_the_logs(client, broker, caplog):
    caplog.set_level("DEBUG")
    signed_post(client, "waha", load_fixture("waha", "ack_read"))
    signed_post(client, "meta", load_fixture("meta", "sent"))
    assert "accepted provider=waha" in caplog.text
    assert "5544999999999" not in caplog.text
    assert "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA" not in caplog.text
