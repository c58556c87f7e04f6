"""Provider bodies become canonical events; invalid bodies name the offending field."""

from datetime import UTC, datetime

import pytest
from marshmallow import ValidationError

from schemas.events import dump_events, load_events
from schemas.registry import PROVIDERS, providers
from tests.conftest import fixture_names, load_fixture

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PARSERS = providers()


def parse(provider, body):
    return PARSERS[provider](body, received_at=NOW, request_id="req-1")


def zapi_body(**fields):
    body = {
        "status": "SENT",
        "ids": ["MSG1"],
        "momment": 1632234645000,
        "phone": "5544999999999",
        "type": "MessageStatusCallback",
        "instanceId": "inst",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def green_body(**fields):
    body = load_fixture("greenapi", "sent")
    body.update(fields)
    return body


ZAPI_MAPPING = [
    ("SENT", "sent"),
    ("RECEIVED", "received"),
    ("MESSAGE_RECEIVED", "received"),
    ("READ", "read"),
    ("PLAYED", "played"),
    ("READ_BY_ME", "read_by_me"),
    ("READ-SELF", "read_by_me"),
]
GREEN_MAPPING = [
    ("sent", "sent"),
    ("delivered", "received"),
    ("read", "read"),
    ("failed", "failed"),
    ("noAccount", "failed"),
    ("notInGroup", "failed"),
    ("yellowCard", "failed"),
    ("noActiveSession", "failed"),
]


@pytest.mark.parametrize("provider", ["zapi", "plug"])
@pytest.mark.parametrize(("raw", "status"), ZAPI_MAPPING)
def test_zapi_style_status_mapping(provider, raw, status):
    [event] = parse(provider, zapi_body(status=raw)).events
    assert (event.provider, event.status, event.raw_status) == (provider, status, raw)


@pytest.mark.parametrize(("raw", "status"), GREEN_MAPPING)
def test_green_api_status_mapping(raw, status):
    [event] = parse("greenapi", green_body(status=raw, description="why")).events
    assert (event.status, event.raw_status) == (status, raw)
    expected_reason = f"{raw}: why" if status == "failed" else None
    assert event.failure_reason == expected_reason


def test_green_api_failure_without_description_keeps_the_raw_status():
    [event] = parse("greenapi", load_fixture("greenapi", "no_account")).events
    assert event.failure_reason == "noAccount"


@pytest.mark.parametrize("provider", ["zapi", "plug"])
@pytest.mark.parametrize("raw", ["sent", "Read", "DELIVERED", "FAILED", "", "READ_SELF"])
def test_unknown_zapi_status_is_invalid_not_guessed(provider, raw):
    with pytest.raises(ValidationError) as err:
        parse(provider, zapi_body(status=raw))
    assert "status" in err.value.messages


@pytest.mark.parametrize("raw", ["SENT", "Delivered", "pending", "deleted"])
def test_unknown_green_api_status_is_invalid(raw):
    with pytest.raises(ValidationError) as err:
        parse("greenapi", green_body(status=raw))
    assert "status" in err.value.messages


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_fixture_parses(provider):
    for fixture in fixture_names(provider):
        parsed = parse(provider, load_fixture(provider, fixture))
        if fixture.startswith("other_type"):
            assert parsed.ignored and parsed.events == [], fixture
        elif fixture.startswith("connection_"):  # tests/test_connections.py has each
            assert parsed.events == [] and (parsed.connections or parsed.ignored), fixture
        else:
            assert parsed.ignored is None and parsed.events, fixture


def test_zapi_seed_fields_become_the_canonical_event():
    [event] = parse("zapi", load_fixture("zapi", "seed_read_by_me")).events
    assert event.message_id == "999999999999999999999"
    assert event.occurred_at == datetime(2021, 9, 21, 14, 30, 45, tzinfo=UTC)
    assert event.received_at == NOW
    assert event.phone == "5544999999999"
    assert event.is_group is False
    assert event.instance_id == "instance.id"
    assert event.request_id == "req-1"


def test_green_api_seed_fields_become_the_canonical_event():
    [event] = parse("greenapi", load_fixture("greenapi", "seed_failed")).events
    assert event.message_id == "3EB0608D6A2901063D63"
    assert event.occurred_at == datetime(2020, 4, 12, 14, 13, 22, tzinfo=UTC)
    assert event.phone == "11001234567890"
    assert event.chat_id == "11001234567890@c.us"
    assert event.is_group is False
    assert event.instance_id == "1234"
    assert event.failure_reason == (
        "failed: Parameter value is not valid, Invalid phone number or wa_id"
    )


def test_green_api_group_chat_is_a_group_without_phone():
    [event] = parse("greenapi", load_fixture("greenapi", "not_in_group")).events
    assert event.is_group is True
    assert event.phone is None
    assert event.chat_id == "120363043968066561@g.us"


def test_zapi_group_keeps_chat_id_and_no_phone():
    [event] = parse("zapi", load_fixture("zapi", "group_read")).events
    assert event.is_group is True
    assert event.phone is None
    assert event.chat_id == "120363019502650977-group"


def test_multi_id_callback_gives_one_event_per_id():
    events = parse("zapi", load_fixture("zapi", "multi_ids")).events
    assert [e.message_id for e in events] == [
        "3EB0A1B2C3D4E5F60001",
        "3EB0A1B2C3D4E5F60002",
        "3EB0A1B2C3D4E5F60003",
    ]
    assert {e.status for e in events} == {"received"}


def test_repeated_id_in_one_callback_gives_one_event():
    events = parse("zapi", zapi_body(ids=["A", "B", "A"])).events
    assert [e.message_id for e in events] == ["A", "B"]


def test_momment_as_string_of_digits_is_milliseconds():
    [event] = parse("zapi", load_fixture("zapi", "momment_as_string")).events
    assert event.occurred_at == datetime(2024, 11, 22, 12, 53, 22, tzinfo=UTC)


def test_phone_is_stored_as_digits_only():
    [event] = parse("zapi", zapi_body(phone="+55 (44) 99999-9999")).events
    assert event.phone == "5544999999999"


def test_unknown_fields_are_ignored():
    assert parse("zapi", load_fixture("zapi", "unknown_fields")).events
    assert parse("greenapi", load_fixture("greenapi", "unknown_fields")).events


def test_plug_2022_body_without_instance_id():
    [event] = parse("plug", load_fixture("plug", "seed_message_received_2022")).events
    assert (event.status, event.instance_id) == ("received", None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ids": None}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": "MSG1"}, "ids"),
        ({"ids": [{}]}, "ids"),
        ({"ids": [""]}, "ids"),
        ({"ids": ["x" * 257]}, "ids"),
        ({"status": None}, "status"),
        ({"status": 3}, "status"),
        ({"momment": None}, "momment"),
        ({"momment": 1632234645000.5}, "momment"),
        ({"momment": True}, "momment"),
        ({"momment": "yesterday"}, "momment"),
        ({"momment": -5}, "momment"),
        ({"momment": 10**30}, "momment"),
        ({"phone": ["5544"]}, "phone"),
        ({"isGroup": "maybe"}, "isGroup"),
    ],
)
def test_invalid_zapi_body_names_the_field(change, field):
    with pytest.raises(ValidationError) as err:
        parse("zapi", zapi_body(**change))
    assert field in err.value.messages


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"idMessage": None}, "idMessage"),
        ({"idMessage": ""}, "idMessage"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"instanceData": "1234"}, "instanceData"),
        ({"chatId": 5}, "chatId"),
    ],
)
def test_invalid_green_api_body_names_the_field(change, field):
    with pytest.raises(ValidationError) as err:
        parse("greenapi", green_body(**change))
    assert field in err.value.messages


@pytest.mark.parametrize("body", [[], "text", 5, None, [{"status": "SENT"}]])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_body_that_is_not_an_object_is_invalid(provider, body):
    with pytest.raises(ValidationError) as err:
        parse(provider, body)
    assert "_schema" in err.value.messages


def test_missing_green_api_type_is_invalid():
    body = green_body()
    del body["typeWebhook"]
    with pytest.raises(ValidationError) as err:
        parse("greenapi", body)
    assert "typeWebhook" in err.value.messages


def test_events_survive_the_queue_round_trip():
    events = parse("zapi", load_fixture("zapi", "multi_ids")).events
    assert load_events(dump_events(events)) == events


@pytest.mark.parametrize(
    ("provider", "body", "field"),
    [
        ("zapi", zapi_body(ids=["ab\x00c"]), "ids"),
        ("zapi", zapi_body(instanceId="in\x00st"), "instanceId"),
        ("zapi", zapi_body(phone="55\x0011"), "phone"),
        ("greenapi", green_body(chatId="7900\x00@c.us"), "chatId"),
        ("greenapi", green_body(status="failed", description="bad\x00"), "description"),
    ],
)
def test_nul_characters_are_invalid_not_poison_for_postgres(provider, body, field):
    """PostgreSQL text cannot hold NUL: accepting one would fail in the worker, not here."""
    with pytest.raises(ValidationError) as err:
        parse(provider, body)
    assert field in err.value.messages
