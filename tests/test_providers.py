"""The provider registry, Z-API/Plug DeliveryCallback, chat kinds, group participants' receipts
and Meta's WhatsApp Cloud API: parsing, the endpoint, and what the store keeps."""

from __future__ import annotations

import copy
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from marshmallow import ValidationError

from app.config import load_config
from app.openapi import build_spec
from schemas.events import StatusEvent
from schemas.fields import chat_identity
from schemas.registry import PROVIDERS, REGISTRY, TokenAuth
from tests.conftest import (
    API_TOKEN,
    VERIFY_TOKENS,
    fixture_names,
    load_fixture,
    make_app,
    queued,
    signed_post,
)
from workers.core import store
from workers.core.store import Outcome

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def parse(provider, body):
    return REGISTRY[provider].parse(body, received_at=NOW, request_id="req-1")


# --- the registry -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_has_fixtures_docs_settings_and_operations(provider):
    record = REGISTRY[provider]
    assert fixture_names(provider), "a provider comes with fixtures in tests/fixtures/<name>/"
    assert record.docs.startswith("https://")
    assert record.invalid_status in (200, 422)
    paths = build_spec()["paths"]
    assert "post" in paths[f"/webhooks/{provider}"]
    if isinstance(record.auth, TokenAuth):
        assert "post" in paths[f"/webhooks/{provider}/{{token}}"]
    if record.handshake:
        assert "get" in paths[f"/webhooks/{provider}"]


def test_configuration_reads_each_records_settings():
    env = {
        setting: f"{setting.lower()}-1, {setting.lower()}-2"
        for r in REGISTRY.values()
        for setting in r.settings
    }
    config = load_config(env)
    assert config["PROVIDER_SECRETS"] == {
        setting: (f"{setting.lower()}-1", f"{setting.lower()}-2") for setting in env
    }
    assert "META_APP_SECRETS" in env and "META_VERIFY_TOKENS" in env


# --- chat identity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "phone"),
    [
        ("5544999999999", "user", "5544999999999"),
        ("+55 (44) 99999-9999", "user", "5544999999999"),
        ("5544999999999@c.us", "user", "5544999999999"),
        ("5544999999999:12@s.whatsapp.net", "user", "5544999999999"),
        ("201558331812345@lid", "lid", None),
        ("120363019502650977-group", "group", None),
        ("120363019502650977@g.us", "group", None),
        ("5544999999999-1623281429", "group", None),
        ("status@broadcast", "broadcast", None),
        ("1234567890@broadcast", "broadcast", None),
        ("someone@example", None, None),
        ("1((((((", None, None),
        ("1-2-3-4-5", None, None),
        ("1\t2\t3\t4\t5\t6\t7", None, None),
        ("\uff15\uff15\uff14\uff14\uff19\uff19\uff19\uff19\uff19", None, None),  # fullwidth
        ("+682 1234", "user", "6821234"),  # the shortest numbers: 7 digits
    ],
)
def test_a_phone_is_kept_only_when_the_chat_id_is_one(value, kind, phone):
    chat = chat_identity(value)
    assert (chat.chat_id, chat.chat_kind, chat.phone) == (value, kind, phone)


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("lid_received", "lid"),
        ("status_broadcast_read_by_me", "broadcast"),
        ("group_read", "group"),
    ],
)
def test_zapi_chat_ids_that_are_not_phones_store_no_phone(fixture, kind):
    for event in parse("zapi", load_fixture("zapi", fixture)).events:
        assert event.phone is None
        assert event.chat_kind == kind
        assert event.chat_id == load_fixture("zapi", fixture)["phone"]


# --- Z-API / Plug DeliveryCallback ----------------------------------------------------------


@pytest.mark.parametrize("provider", ["zapi", "plug"])
def test_delivery_callback_without_error_is_sent(provider):
    [event] = parse(provider, load_fixture("zapi", "delivery_sent")).events
    assert (event.provider, event.message_id, event.status) == (
        provider,
        "3EB0C767D26A1D3AB1F5",
        "sent",
    )
    assert event.occurred_at == datetime.fromtimestamp(1732280000, UTC)
    assert event.failure_reason is None
    assert (event.phone, event.chat_kind, event.instance_id) == (
        "554499999999",
        "user",
        "3C2A8B7E11",
    )


@pytest.mark.parametrize("provider", ["zapi", "plug"])
@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        (
            "delivery_failed_shadow_ban",
            "SHADOW_BAN: Sending temporarily restricted for this number",
        ),
        ("delivery_failed", "The number does not exist on WhatsApp"),
    ],
)
def test_delivery_callback_with_error_is_failed_with_the_reason(provider, fixture, reason):
    [event] = parse(provider, load_fixture("zapi", fixture)).events
    assert event.status == "failed"
    assert event.failure_reason == reason


def test_delivery_callback_of_the_old_docs_without_momment_happened_when_received():
    [event] = parse("zapi", load_fixture("zapi", "delivery_sent_old_docs")).events
    assert event.status == "sent"
    assert event.occurred_at == NOW


def test_delivery_callback_without_message_id_is_invalid_naming_it():
    body = load_fixture("zapi", "delivery_sent")
    del body["messageId"]
    with pytest.raises(ValidationError) as err:
        parse("zapi", body)
    assert "messageId" in err.value.messages


# --- group participants ---------------------------------------------------------------------


def test_zapi_group_receipt_names_its_participant():
    [event] = parse("zapi", load_fixture("zapi", "group_read_participant")).events
    assert (event.participant, event.phone, event.chat_kind, event.is_group) == (
        "5544988887777",
        None,
        "group",
        True,
    )


def test_a_one_to_one_receipt_has_no_participant():
    [event] = parse("zapi", load_fixture("zapi", "seed_read")).events
    assert event.participant is None


def test_a_participant_longer_than_an_id_is_refused_at_the_door():
    body = load_fixture("zapi", "group_read_participant")
    body["participant"] = body["participantPhone"] = "9" * 300
    with pytest.raises(ValidationError) as err:
        parse("zapi", body)
    assert "participant" in err.value.messages


def event(message_id="G1", status="read", participant=None, minutes=0, provider="zapi"):
    return StatusEvent(
        provider=provider,
        message_id=message_id,
        status=status,
        raw_status=status.upper(),
        occurred_at=NOW + timedelta(minutes=minutes),
        received_at=NOW + timedelta(minutes=minutes),
        chat_id="120363019502650977-group",
        chat_kind="group",
        is_group=True,
        participant=participant,
    )


def test_forty_participants_reading_give_forty_receipts_and_one_status(db):
    people = [f"55449888{n:05d}" for n in range(40)]
    outcomes = store.apply_events(db, [event("G1", "received", p) for p in people])
    outcomes += store.apply_events(db, [event("G1", "read", p, 1) for p in people])
    db.commit()
    assert outcomes == {Outcome.APPLIED: 2, Outcome.RECEIPT: 78}
    message = store.fetch_message(db, "zapi", "G1")
    assert message["status"] == "read"
    assert [e["status"] for e in message["events"]] == ["received", "read"]
    receipts = message["receipts"]
    assert len(receipts["participants"]) == 40
    assert {p["status"] for p in receipts["participants"]} == {"read"}
    assert receipts["counts"] == {"sent": 40, "received": 40, "read": 40, "played": 0, "failed": 0}


def test_receipts_count_each_participant_once_however_often_it_is_sent(db):
    first = [
        event("G2", "received", "A"),
        event("G2", "received", "B"),
        event("G2", "read", "A", 2),
    ]
    assert store.apply_events(db, first) == {Outcome.APPLIED: 2, Outcome.RECEIPT: 1}
    # the same receipts again, and B's read arriving late
    again = [*first, event("G2", "read", "B", 3)]
    assert store.apply_events(db, again) == {Outcome.DUPLICATE: 3, Outcome.RECEIPT: 1}
    db.commit()
    receipts = store.fetch_message(db, "zapi", "G2")["receipts"]
    assert receipts["counts"]["read"] == 2 and receipts["counts"]["received"] == 2
    by_person = {p["participant"]: p for p in receipts["participants"]}
    assert by_person["A"]["status"] == "read"
    assert by_person["A"]["seen"]["received"] == NOW
    assert by_person["A"]["seen"]["read"] == NOW + timedelta(minutes=2)


def test_one_participants_read_reaching_the_message_first_counts_as_received_too(db):
    store.apply_events(db, [event("G3", "read", "A"), event("G3", "received", "B")])
    db.commit()
    receipts = store.fetch_message(db, "zapi", "G3")["receipts"]
    assert receipts["counts"] == {"sent": 2, "received": 2, "read": 1, "played": 0, "failed": 0}


def test_one_members_failure_does_not_fail_the_group_message(db):
    outcomes = store.apply_events(db, [event("G4", "sent"), event("G4", "failed", "A")])
    outcomes += store.apply_events(db, [event("G4", "read", "B", 1)])
    db.commit()
    assert outcomes == {Outcome.APPLIED: 2, Outcome.RECEIPT: 1}
    message = store.fetch_message(db, "zapi", "G4")
    assert message["status"] == "read"
    assert [e["status"] for e in message["events"]] == ["sent", "read"]
    by_person = {p["participant"]: p["status"] for p in message["receipts"]["participants"]}
    assert by_person == {"A": "failed", "B": "read"}


def test_a_participants_furthest_status_does_not_depend_on_arrival_order(db):
    store.apply_events(db, [event("G5", "failed", "A"), event("G5", "read", "A", 1)])
    store.apply_events(db, [event("G5", "read", "B"), event("G5", "failed", "B", 1)])
    db.commit()
    receipts = store.fetch_message(db, "zapi", "G5")["receipts"]
    assert {p["participant"]: p["status"] for p in receipts["participants"]} == {
        "A": "read",
        "B": "read",
    }
    assert receipts["counts"] == {"sent": 2, "received": 2, "read": 2, "played": 0, "failed": 0}


def test_a_one_to_one_message_has_no_receipts(db):
    store.apply_events(db, [event("D1", "read")])
    db.commit()
    assert store.fetch_message(db, "zapi", "D1")["receipts"] is None


# --- Meta: parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "status"),
    [
        ("sent", "sent"),
        ("delivered", "received"),
        ("read", "read"),
        ("played", "played"),
        ("failed", "failed"),
    ],
)
def test_meta_status_mapping(fixture, status):
    [ev] = parse("meta", load_fixture("meta", fixture)).events
    raw = load_fixture("meta", fixture)["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert (ev.provider, ev.message_id, ev.status, ev.raw_status) == (
        "meta",
        raw["id"],
        status,
        raw["status"],
    )
    assert ev.occurred_at == datetime.fromtimestamp(int(raw["timestamp"]), UTC)
    assert (ev.phone, ev.chat_kind, ev.instance_id) == ("16505551234", "user", "106540352242922")


def test_meta_failure_reason_comes_from_errors():
    [ev] = parse("meta", load_fixture("meta", "failed")).events
    assert ev.failure_reason == (
        "131049 This message was not delivered to maintain healthy ecosystem engagement.: In "
        "order to maintain a healthy ecosystem engagement, the message failed to be delivered."
    )


def test_meta_every_status_of_every_entry_becomes_an_event():
    events = parse("meta", load_fixture("meta", "batch_two_entries")).events
    assert [(e.message_id, e.status, e.instance_id) for e in events] == [
        ("wamid.BATCH1", "received", "106540352242922"),
        ("wamid.BATCH2", "read", "106540352242922"),
        ("wamid.BATCH3", "sent", "106540352242923"),
        ("wamid.BATCH4", "failed", "106540352242923"),
    ]
    assert events[3].failure_reason == "131026 Message undeliverable: Message Undeliverable."


def test_meta_group_status_names_the_participant():
    [ev] = parse("meta", load_fixture("meta", "group_read")).events
    assert (ev.chat_id, ev.chat_kind, ev.phone, ev.participant) == (
        "120363019502650977",
        "group",
        None,
        "16505550001",
    )


@pytest.mark.parametrize(
    ("fixture", "ignored"),
    [("other_type_incoming_message", "messages"), ("other_type_account_update", "account_update")],
)
def test_meta_bodies_without_statuses_are_ignored(fixture, ignored):
    assert parse("meta", load_fixture("meta", fixture)).ignored == ignored


def test_meta_other_object_is_ignored():
    assert parse("meta", {"object": "page", "entry": []}).ignored == "page"


def test_meta_another_fields_value_never_invalidates_the_statuses():
    body = load_fixture("meta", "batch_two_entries")
    body["entry"][0]["changes"].insert(0, {"field": "account_update", "value": "not an object"})
    assert len(parse("meta", body).events) == 4
    # and an invalid status is still named where it is in the body as sent
    body["entry"][0]["changes"][1]["value"]["statuses"][1]["status"] = "deleted"
    errors = parse("meta", body).errors
    assert list(errors["entry"][0]["changes"]) == [1]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda s: s.update(status="deleted"), "status"),
        (lambda s: s.update(timestamp="soon"), "timestamp"),
        (lambda s: s.pop("id"), "id"),
    ],
)
def test_meta_invalid_status_is_named_and_the_rest_of_the_batch_kept(change, path):
    body = load_fixture("meta", "batch_two_entries")
    change(body["entry"][1]["changes"][0]["value"]["statuses"][1])
    parsed = parse("meta", body)
    assert [e.message_id for e in parsed.events] == ["wamid.BATCH1", "wamid.BATCH2", "wamid.BATCH3"]
    statuses = parsed.errors["entry"][1]["changes"][0]["value"]["statuses"]
    assert list(statuses) == [1]
    assert path in statuses[1]


def test_meta_body_whose_every_status_is_invalid_is_invalid():
    body = load_fixture("meta", "sent")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    with pytest.raises(ValidationError) as err:
        parse("meta", body)
    assert "status" in err.value.messages["entry"][0]["changes"][0]["value"]["statuses"][0]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda b: b.pop("entry"), ["entry"]),
        (lambda b: b["entry"][0].pop("changes"), ["entry", 0, "changes"]),
        (lambda b: b["entry"][0]["changes"][0].pop("value"), ["entry", 0, "changes", 0, "value"]),
        (
            lambda b: b["entry"][0]["changes"][0]["value"].update(statuses="x"),
            ["entry", 0, "changes", 0, "value", "statuses"],
        ),
    ],
)
def test_meta_broken_envelope_is_invalid_naming_where(change, path):
    body = load_fixture("meta", "sent")
    change(body)
    with pytest.raises(ValidationError) as err:
        parse("meta", body)
    where = err.value.messages
    for key in path:
        where = where[key]
    assert where


# --- Meta: the endpoint ---------------------------------------------------------------------


def test_signed_meta_post_enqueues_every_status(client, broker):
    response = signed_post(client, "meta", load_fixture("meta", "batch_two_entries"))
    assert response.status_code == 200
    assert response.json == {"accepted": 4}
    [(_task, events)] = queued(broker)
    assert [e["message_id"] for e in events] == [f"wamid.BATCH{n}" for n in range(1, 5)]


def test_meta_signature_with_the_previous_app_secret_still_verifies(client, broker):
    response = signed_post(client, "meta", load_fixture("meta", "sent"), "meta-app-secret-old")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": "sha256="},
        {"X-Hub-Signature-256": "sha1=abc"},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"Authorization": "Bearer meta-app-secret"},
    ],
)
def test_meta_post_without_a_valid_signature_is_401_and_enqueues_nothing(client, broker, headers):
    raw = json.dumps(load_fixture("meta", "sent")).encode()
    response = client.post(
        "/webhooks/meta", data=raw, headers=headers, content_type="application/json"
    )
    assert response.status_code == 401
    assert response.json["error"] == "missing or invalid X-Hub-Signature-256 signature"
    assert queued(broker) == []


def test_meta_signature_is_over_the_exact_bytes(client, broker):
    """The same JSON serialised another way is other bytes: its signature does not verify."""
    body = load_fixture("meta", "sent")
    raw = json.dumps(body).encode()
    assert signed_post(client, "meta", raw).status_code == 200
    reformatted = json.dumps(body, indent=2).encode()
    digest = hmac.new(b"meta-app-secret-old", raw, "sha256").hexdigest()
    response = client.post(
        "/webhooks/meta",
        data=reformatted,
        headers={"X-Hub-Signature-256": f"sha256={digest}"},
        content_type="application/json",
    )
    assert response.status_code == 401
    assert len(queued(broker)) == 1


def test_meta_takes_no_token_in_the_path(client, broker):
    raw = json.dumps(load_fixture("meta", "sent")).encode()
    response = client.post(
        "/webhooks/meta/meta-app-secret", data=raw, content_type="application/json"
    )
    assert response.status_code == 404
    assert queued(broker) == []


def test_meta_invalid_body_is_answered_200_and_quarantined(client, broker):
    body = load_fixture("meta", "sent")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    response = signed_post(client, "meta", body)
    assert response.status_code == 200
    assert response.json["quarantined"] is True
    assert "entry" in response.json["errors"]
    assert [task for task, _ in queued(broker)] == ["ticks.quarantine"]


def test_meta_batch_with_one_invalid_status_enqueues_the_rest_and_quarantines_the_body(
    client, broker
):
    body = load_fixture("meta", "batch_two_entries")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    response = signed_post(client, "meta", body)
    assert response.status_code == 200
    assert response.json["accepted"] == 3
    assert response.json["quarantined"] is True
    assert response.json["errors"]["entry"]["0"]["changes"]["0"]["value"]["statuses"]["0"]
    tasks = queued(broker)
    assert [task for task, _ in tasks] == ["ticks.apply_events", "ticks.quarantine"]
    assert [e["message_id"] for e in tasks[0][1]] == [
        "wamid.BATCH2",
        "wamid.BATCH3",
        "wamid.BATCH4",
    ]


def test_meta_incoming_messages_are_answered_200_and_ignored(client, broker):
    response = signed_post(client, "meta", load_fixture("meta", "other_type_incoming_message"))
    assert response.json == {"accepted": 0, "ignored": "messages"}
    assert queued(broker) == []


def verify(client, **params):
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", **params}
    return client.get("/webhooks/meta", query_string=query)


def test_meta_verification_echoes_the_challenge(client):
    response = verify(client, **{"hub.verify_token": VERIFY_TOKENS["meta"][0]})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == "1158201444"


def test_meta_verification_with_a_wrong_token_is_403(client):
    response = verify(client, **{"hub.verify_token": "guess"})
    assert response.status_code == 403
    assert "META_VERIFY_TOKENS" in response.json["error"]
    assert "1158201444" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "params", [{"hub.mode": "unsubscribe"}, {"hub.challenge": ""}, {"hub.challenge": "x" * 300}]
)
def test_meta_verification_needs_subscribe_and_a_challenge(client, params):
    response = verify(client, **{"hub.verify_token": VERIFY_TOKENS["meta"][0], **params})
    assert response.status_code == 400


def test_meta_is_404_until_its_secrets_are_set(database_url, redis_url, broker):
    client = make_app(
        database_url,
        redis_url,
        PROVIDER_SECRETS={"ZAPI_WEBHOOK_TOKENS": ("z",)},
    ).test_client()
    assert signed_post(client, "meta", load_fixture("meta", "sent"), "x").status_code == 404
    assert verify(client, **{"hub.verify_token": "x"}).status_code == 404


def test_meta_verification_fails_until_its_app_secret_is_set(database_url, redis_url, broker):
    """A verify token alone once passed Meta's "Verify and save" while every POST was 404 (no
    app secret to check their signatures): Meta disabled the webhook after its retries."""
    token = VERIFY_TOKENS["meta"][0]
    client = make_app(
        database_url, redis_url, PROVIDER_SECRETS={"META_VERIFY_TOKENS": (token,)}
    ).test_client()
    assert verify(client, **{"hub.verify_token": token}).status_code == 404
    assert signed_post(client, "meta", load_fixture("meta", "sent"), "x").status_code == 404


def test_a_provider_without_a_handshake_answers_get_405(client):
    response = client.get("/webhooks/zapi")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_phones_older_versions_took_from_lid_and_group_ids_are_not_shown(db):
    db.execute(
        "INSERT INTO messages (provider, message_id, phone, chat_id, is_group)"
        " VALUES ('zapi', 'OLD-LID', '201558331812345', '201558331812345@lid', false),"
        " ('zapi', 'OLD-USER', '5544999999999', '5544999999999', false)"
    )
    db.commit()
    lid = store.fetch_message(db, "zapi", "OLD-LID")
    assert (lid["chat_kind"], lid["phone"]) == ("lid", None)
    user = store.fetch_message(db, "zapi", "OLD-USER")
    assert (user["chat_kind"], user["phone"]) == ("user", "5544999999999")


def test_meta_events_land_in_the_store(db):
    events = parse("meta", load_fixture("meta", "batch_two_entries")).events
    group = parse("meta", load_fixture("meta", "group_read")).events
    assert store.apply_events(db, copy.deepcopy(events + group)) == {Outcome.APPLIED: 5}
    db.commit()
    failed = store.fetch_message(db, "meta", "wamid.BATCH4")
    assert failed["status"] == "failed"
    assert failed["failure_reason"].startswith("131026")
    message = store.fetch_message(db, "meta", group[0].message_id)
    assert message["chat_kind"] == "group" and message["phone"] is None
    assert message["receipts"]["participants"][0]["participant"] == "16505550001"
