"""The new provider shapes end to end: HTTP -> broker -> a real worker -> Postgres -> read API.

Every test runs on Redis and on RabbitMQ (ON_EACH_BROKER, tests/brokers.py).
"""

from __future__ import annotations

import hmac
import json

import pytest

from tests.brokers import ON_EACH_BROKER
from tests.conftest import API_TOKEN, load_fixture, signed_post, wait_for

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def read_message(client, provider, message_id, until=lambda m: True):
    response = client.get(f"/messages/{provider}/{message_id}", headers=AUTH)
    if response.status_code == 200 and until(response.json):
        return response.json
    return None


@ON_EACH_BROKER
def test_zapi_delivery_callback_with_error_makes_the_message_failed(client, start_worker):
    start_worker()
    body = load_fixture("zapi", "delivery_failed_shadow_ban")
    assert signed_post(client, "zapi", body).json == {"accepted": 1}
    message = wait_for(lambda: read_message(client, "zapi", body["messageId"]))
    assert message["status"] == "failed"
    assert message["failure_reason"] == (
        "SHADOW_BAN: Sending temporarily restricted for this number"
    )
    # failed is terminal: a late status callback for it changes nothing
    late = {**load_fixture("zapi", "seed_sent"), "ids": [body["messageId"]]}
    assert signed_post(client, "zapi", late).json == {"accepted": 1}
    message = wait_for(
        lambda: read_message(client, "zapi", body["messageId"], lambda m: len(m["events"]) == 2)
    )
    assert message["status"] == "failed"


@ON_EACH_BROKER
def test_plug_delivery_callback_without_error_is_sent_then_read_moves_on(client, start_worker):
    start_worker()
    body = load_fixture("zapi", "delivery_sent")
    assert signed_post(client, "plug", body).json == {"accepted": 1}
    read = {**load_fixture("zapi", "seed_read"), "ids": [body["messageId"]]}
    assert signed_post(client, "plug", read).json == {"accepted": 1}
    message = wait_for(
        lambda: read_message(client, "plug", body["messageId"], lambda m: m["status"] == "read")
    )
    assert sorted(e["raw_status"] for e in message["events"]) == ["DeliveryCallback:ok", "READ"]
    assert message["sent_at"] is not None


@ON_EACH_BROKER
def test_forty_participants_read_receipts_give_forty_receipts_and_one_status(client, start_worker):
    start_worker()
    people = [f"5544988{n:06d}" for n in range(40)]
    for person in people:
        body = load_fixture("zapi", "group_read_participant")
        body["participant"] = body["participantPhone"] = person
        assert signed_post(client, "zapi", body).json == {"accepted": 1}
    message_id = body["ids"][0]
    message = wait_for(
        lambda: read_message(
            client,
            "zapi",
            message_id,
            lambda m: len((m["receipts"] or {}).get("participants", [])) == 40,
        )
    )
    assert message["status"] == "read"
    assert len(message["events"]) == 1
    assert message["chat_kind"] == "group" and message["phone"] is None
    assert sorted(p["participant"] for p in message["receipts"]["participants"]) == people
    assert message["receipts"]["counts"]["read"] == 40


@ON_EACH_BROKER
def test_signed_meta_post_with_two_entries_lands_every_status(client, start_worker):
    start_worker()
    body = load_fixture("meta", "batch_two_entries")
    assert signed_post(client, "meta", body).json == {"accepted": 4}
    expected = {
        "wamid.BATCH1": ("received", "106540352242922"),
        "wamid.BATCH2": ("read", "106540352242922"),
        "wamid.BATCH3": ("sent", "106540352242923"),
        "wamid.BATCH4": ("failed", "106540352242923"),
    }
    for message_id, (status, instance) in expected.items():
        message = wait_for(lambda m=message_id: read_message(client, "meta", m))
        assert (message["status"], message["instance_id"]) == (status, instance)
        assert message["chat_kind"] == "user" and message["phone"].startswith("1650555123")


@ON_EACH_BROKER
def test_meta_with_a_wrong_signature_lands_nothing(client, start_worker, db):
    start_worker()
    body = load_fixture("meta", "sent")
    assert signed_post(client, "meta", body, secret="not-the-app-secret").status_code == 401
    assert signed_post(client, "meta", load_fixture("meta", "read")).status_code == 200
    wait_for(
        lambda: read_message(
            client, "meta", "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
        )
    )
    [[count]] = db.execute("SELECT count(*) FROM status_events").fetchall()
    assert count == 1  # the read; the unsigned sent never arrived


@ON_EACH_BROKER
def test_signed_waha_ack_lands(client, start_worker):
    start_worker()
    raw = json.dumps(load_fixture("waha", "ack_device")).encode()
    signature = hmac.new(b"waha-hmac-key", raw, "sha512").hexdigest()
    response = client.post(
        "/webhooks/waha",
        data=raw,
        content_type="application/json",
        headers={"X-Webhook-Hmac": signature, "X-Webhook-Hmac-Algorithm": "sha512"},
    )
    assert response.json == {"accepted": 1}
    assert signed_post(client, "waha", load_fixture("waha", "ack_played")).json == {"accepted": 1}
    message_id = "true_5544999999999@c.us_4CC5EDD64BC22EBA6D639F2AF571346C"
    message = wait_for(
        lambda: read_message(client, "waha", message_id, lambda m: len(m["events"]) == 2)
    )
    assert message["status"] == "played"
    assert message["received_at"] is not None


@ON_EACH_BROKER
def test_evolution_string_and_numeric_statuses_both_land(client, start_worker):
    start_worker()
    as_word = load_fixture("evolution", "v2_server_ack")
    as_number = load_fixture("evolution", "numeric_status_read")  # 4: READ
    for body in (as_word, as_number):
        assert signed_post(client, "evolution", body).json == {"accepted": 1}
    message = wait_for(
        lambda: read_message(
            client, "evolution", as_word["data"]["keyId"], lambda m: len(m["events"]) == 2
        )
    )
    assert message["status"] == "read"
    assert sorted(e["raw_status"] for e in message["events"]) == ["READ", "SERVER_ACK"]


@ON_EACH_BROKER
def test_signed_twilio_form_lands_and_a_pending_one_moves_nothing(client, start_worker):
    start_worker()
    for name in ("queued", "delivered", "sent"):
        assert signed_post(client, "twilio", load_fixture("twilio", name)).json == {"accepted": 1}
    message = wait_for(
        lambda: read_message(
            client,
            "twilio",
            "SM1f0e8ae6ade43cb3c0ce4525424e404f",
            lambda m: len(m["events"]) == 3,
        )
    )
    assert message["status"] == "received"
    assert message["phone"] == "5544999999999"
    assert {e["status"]: e["applied"] for e in message["events"]}["pending"] is False


@ON_EACH_BROKER
@pytest.mark.parametrize(
    ("provider", "fixture"),
    [
        ("evolution", "other_type_messages_upsert"),
        ("waha", "other_type_message"),
        ("twilio", "other_type_inbound_received"),
        ("meta", "other_type_incoming_message"),
        ("meta", "other_type_account_update"),
    ],
)
def test_other_event_types_are_answered_200_and_ignored(client, task_broker, provider, fixture):
    response = signed_post(client, provider, load_fixture(provider, fixture))
    assert response.status_code == 200
    assert response.json["accepted"] == 0 and response.json["ignored"]
    assert task_broker.waiting() == 0
