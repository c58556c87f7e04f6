"""Instances' connection events: each provider's, as it sends them (tests/fixtures/*/connection_*,
verified in docs/research-connection-events.md), authenticated, enqueued, recorded once by a
real worker, the latest by when it happened, and shown by GET /instances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.events import ConnectionEvent
from schemas.registry import REGISTRY
from tests.conftest import API_TOKEN, load_fixture, queued, signed_post, wait_for
from workers.celery_app import APPLY_EVENTS, RECORD_CONNECTIONS
from workers.core import store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

# fixture -> (instance_id, state, raw_state, reason)
RECORDED = {
    ("zapi", "connection_disconnected"): (
        "3C2A8B7E11",
        "disconnected",
        "DisconnectedCallback",
        "Device has been disconnected",
    ),
    ("zapi", "connection_disconnected_docs"): (
        "3C2A8B7E11",
        "disconnected",
        "DisconnectedCallback",
        "Device has been disconnected",
    ),
    ("zapi", "connection_connected"): ("3C2A8B7E11", "connected", "ConnectedCallback", None),
    ("zapi", "connection_connected_docs"): ("3C2A8B7E11", "connected", "ConnectedCallback", None),
    ("greenapi", "connection_state_authorized"): ("1101000001", "connected", "authorized", None),
    ("greenapi", "connection_state_authorized_seed"): (
        "1101000001",
        "connected",
        "authorized",
        None,
    ),
    ("evolution", "connection_open_seed"): ("loja-centro", "connected", "open 200", None),
    ("waha", "connection_session_status_working_seed"): ("default", "connected", "WORKING", None),
    ("greenapi", "connection_state_starting"): ("1101000001", "connecting", "starting", None),
    ("greenapi", "connection_state_not_authorized"): (
        "1101000001",
        "disconnected",
        "notAuthorized",
        None,
    ),
    ("greenapi", "connection_state_sleep_mode"): ("1101000001", "disconnected", "sleepMode", None),
    ("greenapi", "connection_state_yellow_card"): ("1101000001", "restricted", "yellowCard", None),
    ("greenapi", "connection_state_blocked"): ("1101000001", "banned", "blocked", None),
    ("waha", "connection_session_status_working"): ("default", "connected", "WORKING", None),
    ("waha", "connection_session_status_starting"): ("default", "connecting", "STARTING", None),
    ("waha", "connection_session_status_scan_qr_code"): (
        "default",
        "disconnected",
        "SCAN_QR_CODE",
        None,
    ),
    ("waha", "connection_session_status_stopped"): ("default", "disconnected", "STOPPED", None),
    ("waha", "connection_session_status_failed"): ("default", "disconnected", "FAILED", None),
    ("waha", "connection_session_status_passkey_required"): (
        "loja-centro",
        "disconnected",
        "PASSKEY_REQUIRED",
        None,
    ),
    ("evolution", "connection_open"): ("loja-centro", "connected", "open 200", None),
    ("evolution", "connection_connecting"): ("loja-centro", "connecting", "connecting 200", None),
    ("evolution", "connection_close_logged_out_401"): (
        "loja-centro",
        "disconnected",
        "close 401",
        "logged out",
    ),
    ("evolution", "connection_close_402"): (
        "loja-centro",
        "restricted",
        "close 402",
        "temporarily banned",
    ),
    ("evolution", "connection_close_forbidden_403"): (
        "loja-centro",
        "banned",
        "close 403",
        "forbidden",
    ),
    ("evolution", "connection_close_replaced_440_v1"): (
        "loja-centro",
        "disconnected",
        "close 440",
        "replaced by another session",
    ),
    ("evolution", "connection_refused_qr_limit"): (
        "loja-centro",
        "disconnected",
        "refused 428",
        None,
    ),
    # Meta: a business number's quality (display_phone_number) and a business account's
    # standing (the WABA id; a legacy report named its phone_number).
    ("meta", "connection_quality_flagged"): (
        "15550783881",
        "restricted",
        "FLAGGED",
        "messaging limit TIER_10K",
    ),
    ("meta", "connection_quality_downgrade"): (
        "15550783881",
        "restricted",
        "DOWNGRADE",
        "messaging limit TIER_2K",
    ),
    ("meta", "connection_quality_upgrade"): (
        "15550783881",
        "connected",
        "UPGRADE",
        "messaging limit TIER_10K",
    ),
    ("meta", "connection_quality_unflagged"): (
        "15550783881",
        "connected",
        "UNFLAGGED",
        "messaging limit TIER_10K",
    ),
    ("meta", "connection_quality_onboarding"): (
        "15550783881",
        "connecting",
        "ONBOARDING",
        "messaging limit TIER_250",
    ),
    ("meta", "connection_quality_throughput_upgrade"): (
        "15550783881",
        "connected",
        "THROUGHPUT_UPGRADE",
        "messaging limit TIER_UNLIMITED",
    ),
    ("meta", "connection_account_restriction"): (
        "102290129340398",
        "restricted",
        "ACCOUNT_RESTRICTION",
        "RESTRICTED_BIZ_INITIATED_MESSAGING, RESTRICTED_ADD_PHONE_NUMBER_ACTION",
    ),
    ("meta", "connection_account_restriction_legacy"): (
        "15550783881",
        "restricted",
        "ACCOUNT_RESTRICTION",
        "RESTRICTED_CUSTOMER_INITIATED_MESSAGING",
    ),
    ("meta", "connection_account_violation"): (
        "102290129340398",
        "restricted",
        "ACCOUNT_VIOLATION",
        "SCAM",
    ),
    ("meta", "connection_account_disabled"): (
        "102290129340398",
        "banned",
        "DISABLED_UPDATE DISABLE",
        "June 11, 2025",
    ),
    ("meta", "connection_account_schedule_for_disable"): (
        "102290129340398",
        "restricted",
        "DISABLED_UPDATE SCHEDULE_FOR_DISABLE",
        "June 18, 2025",
    ),
    ("meta", "connection_account_reinstated"): (
        "102290129340398",
        "connected",
        "DISABLED_UPDATE REINSTATE",
        "June 11, 2025",
    ),
    ("meta", "connection_account_offboarded"): (
        "102290129340398",
        "disconnected",
        "ACCOUNT_OFFBOARDED",
        None,
    ),
    ("meta", "connection_account_reconnected"): (
        "102290129340398",
        "connected",
        "ACCOUNT_RECONNECTED",
        None,
    ),
    ("meta", "connection_account_partner_removed_disconnection"): (
        "980198427658004",
        "disconnected",
        "PARTNER_REMOVED",
        "PRIMARY_INACTIVITY",
    ),
}
# Received and answered 200, not recorded: Green-API's deprecated statusInstanceChanged
# ("temporarily not working" per its docs) and Evolution v1's status.instance.
IGNORED = {
    ("greenapi", "connection_status_instance_offline"): "statusInstanceChanged",
    ("evolution", "connection_status_instance_closed"): "status.instance",
}


def parse(provider: str, name: str):
    return REGISTRY[provider].parse(load_fixture(provider, name), received_at=NOW, request_id="r")


def test_every_connection_fixture_is_either_recorded_or_ignored():
    from tests.conftest import fixture_names

    names = {(p, n) for p in REGISTRY for n in fixture_names(p) if n.startswith("connection_")}
    assert names == set(RECORDED) | set(IGNORED)


@pytest.mark.parametrize(("provider", "name"), sorted(RECORDED))
def test_each_providers_connection_event_in_one_vocabulary(provider, name):
    parsed = parse(provider, name)
    assert parsed.events == [] and parsed.ignored is None
    [event] = parsed.connections
    assert (event.instance_id, event.state, event.raw_state, event.reason) == RECORDED[
        (provider, name)
    ]
    assert event.provider == provider and event.received_at == NOW


@pytest.mark.parametrize(("provider", "name"), sorted(IGNORED))
def test_connection_events_not_recorded_are_ignored(provider, name):
    parsed = parse(provider, name)
    assert parsed.ignored == IGNORED[(provider, name)] and not parsed.connections


def test_times_are_the_providers_own_in_seconds_or_milliseconds():
    assert parse("greenapi", "connection_state_blocked").connections[0].occurred_at == (
        datetime.fromtimestamp(1732281000, UTC)
    )
    # Z-API's momment: milliseconds in its live callbacks, seconds in one docs example.
    zapi_ms = parse("zapi", "connection_disconnected").connections[0].occurred_at
    zapi_s = parse("zapi", "connection_disconnected_docs").connections[0].occurred_at
    assert zapi_ms == datetime.fromtimestamp(1732280400, UTC)
    assert zapi_s == datetime.fromtimestamp(1580163342, UTC)
    # Evolution's date_time (its server's local time marked Z) orders its own reports.
    assert parse("evolution", "connection_open").connections[0].occurred_at == datetime(
        2025, 9, 24, 21, 40, 2, 118000, UTC
    )


@pytest.mark.parametrize(
    ("provider", "body", "field"),
    [
        (
            "greenapi",
            {**load_fixture("greenapi", "connection_state_blocked"), "stateInstance": "melted"},
            "stateInstance",
        ),
        (
            "waha",
            {**load_fixture("waha", "connection_session_status_working"), "payload": {}},
            "payload",
        ),
        (
            "evolution",
            {**load_fixture("evolution", "connection_open"), "data": {"state": "exploded"}},
            "data",
        ),
        (
            "zapi",
            {**load_fixture("zapi", "connection_connected"), "instanceId": None},
            "instanceId",
        ),
    ],
)
def test_a_bad_connection_event_is_quarantined_naming_the_field(
    client, broker, provider, body, field
):
    response = signed_post(client, provider, body)
    assert response.status_code == REGISTRY[provider].invalid_status
    assert field in response.json["errors"]
    assert [name for name, _ in queued(broker)] == ["ticks.quarantine"]


def test_the_endpoint_enqueues_a_connection_event_once_proven(client, broker):
    body = load_fixture("greenapi", "connection_state_yellow_card")
    assert signed_post(client, "greenapi", body, secret="wrong").status_code == 401
    assert queued(broker) == []
    response = signed_post(client, "greenapi", body)
    assert response.status_code == 200 and response.json == {"accepted": 1}
    [(task, payload)] = queued(broker)
    assert task == RECORD_CONNECTIONS
    assert payload[0]["state"] == "restricted" and payload[0]["instance_id"] == "1101000001"


def test_a_meta_body_with_a_status_and_a_quality_report_enqueues_both(client, broker):
    body = load_fixture("meta", "delivered")
    quality = load_fixture("meta", "connection_quality_flagged")["entry"][0]
    body = {**body, "entry": [*body["entry"], quality]}
    response = signed_post(client, "meta", body)
    assert response.status_code == 200 and response.json == {"accepted": 2}
    tasks = dict(queued(broker))
    assert tasks[RECORD_CONNECTIONS][0]["state"] == "restricted"
    assert [e["status"] for e in tasks[APPLY_EVENTS]] == ["received"]


def test_a_meta_account_update_that_says_nothing_of_health_is_ignored():
    parsed = parse("meta", "other_type_account_update")  # VERIFIED_ACCOUNT
    assert parsed.ignored == "account_update" and not parsed.connections


def event(state: str, at: datetime, raw: str | None = None, received: datetime | None = None):
    return ConnectionEvent(
        provider="waha",
        instance_id="shop",
        state=state,
        raw_state=raw or state.upper(),
        occurred_at=at,
        received_at=received or at + timedelta(seconds=1),
    )


def test_the_latest_report_wins_by_when_it_happened(db):
    store.record_connections(db, [event("connected", NOW)])
    store.record_connections(db, [event("disconnected", NOW + timedelta(minutes=5))])
    # Late news of an earlier moment changes nothing but the history.
    store.record_connections(db, [event("connecting", NOW - timedelta(minutes=5))])
    [row] = store.fetch_instances(db)
    assert (row["state"], row["since"]) == ("disconnected", NOW + timedelta(minutes=5))
    # The same state again keeps when it began.
    store.record_connections(db, [event("disconnected", NOW + timedelta(minutes=9), "STOPPED")])
    [row] = store.fetch_instances(db)
    assert row["raw_state"] == "STOPPED" and row["since"] == NOW + timedelta(minutes=5)
    assert row["reported_at"] == NOW + timedelta(minutes=9)
    # A retry of a report is the same report.
    assert store.record_connections(db, [event("connected", NOW)]) == 0
    assert db.execute("SELECT count(*) FROM instance_events").fetchone() == (4,)


def test_a_report_dated_in_the_future_cannot_pin_a_state(db):
    """A time over a day past its receipt (Z-API's docs example says the year 2798) counts
    as of when Ticks received it, and later reports still move the instance."""
    store.record_connections(
        db, [event("connected", datetime(2798, 9, 16, tzinfo=UTC), received=NOW)]
    )
    store.record_connections(db, [event("banned", NOW + timedelta(minutes=1))])
    assert store.fetch_instances(db)[0]["state"] == "banned"


def test_a_providers_clock_ahead_still_orders_its_reports(db):
    """A provider's clock 30 s ahead: its earlier report, delivered late, must not win over
    its later one (the order is the provider's own times)."""
    skew = timedelta(seconds=30)
    later = event(
        "connected", NOW + timedelta(seconds=10) + skew, received=NOW + timedelta(seconds=10)
    )
    earlier = event("disconnected", NOW + skew, received=NOW + timedelta(seconds=40))
    store.record_connections(db, [later])
    store.record_connections(db, [earlier])
    assert store.fetch_instances(db)[0]["state"] == "connected"


def test_reports_of_the_same_second_go_by_their_receipt(db):
    """Green-API's times are whole seconds: a disconnect and a reconnect in one second are
    ordered by when Ticks received them, whichever worker records them first."""
    store.record_connections(
        db, [event("connected", NOW, "WORKING", received=NOW + timedelta(milliseconds=900))]
    )
    store.record_connections(
        db, [event("disconnected", NOW, "STOPPED", received=NOW + timedelta(milliseconds=100))]
    )
    assert store.fetch_instances(db)[0]["state"] == "connected"


def test_an_evolution_retry_is_the_same_report(db):
    """Evolution retries a 503 ten times: each retry carries the same date_time, so it is
    recorded once and cannot overwrite a later state."""
    body = load_fixture("evolution", "connection_close_logged_out_401")
    first = parse("evolution", "connection_close_logged_out_401").connections
    again = REGISTRY["evolution"].parse(
        body, received_at=NOW + timedelta(minutes=5), request_id="r2"
    )
    assert store.record_connections(db, first) == 1
    assert store.record_connections(db, again.connections) == 0


def test_events_land_through_a_real_worker_and_show_in_get_instances(client, db, start_worker):
    start_worker()
    # Out of order, one of them twice: blocked happened last.
    for name in (
        "connection_state_blocked",
        "connection_state_authorized",
        "connection_state_yellow_card",
        "connection_state_blocked",
    ):
        assert signed_post(client, "greenapi", load_fixture("greenapi", name)).status_code == 200
    signed_post(client, "waha", load_fixture("waha", "connection_session_status_working"))
    # An instance Ticks knows only from its statuses.
    zapi = {
        **load_fixture("zapi", "seed_sent"),
        "ids": ["I-1"],
        "momment": int(NOW.timestamp() * 1000),
    }
    signed_post(client, "zapi", zapi)
    wait_for(
        lambda: (
            db.execute("SELECT count(*) FROM instance_events").fetchone()[0] == 4
            and db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        ),
        timeout=30,
    )
    listed = client.get("/instances", headers=AUTH).json["instances"]
    by_id = {(i["provider"], i["instance_id"]): i for i in listed}
    green = by_id[("greenapi", "1101000001")]["reported"]
    assert (green["state"], green["raw_state"]) == ("banned", "blocked")
    assert green["since"] == datetime.fromtimestamp(1732281000, UTC).isoformat()
    assert by_id[("waha", "default")]["reported"]["state"] == "connected"
    seen_only = by_id[("zapi", "instance.id")]
    assert seen_only["reported"] is None and seen_only["last_status_at"] is not None
    only_waha = client.get("/instances?provider=waha", headers=AUTH).json["instances"]
    assert [i["instance_id"] for i in only_waha] == ["default"]


def test_get_instances_needs_the_token_and_a_known_provider(client):
    assert client.get("/instances").status_code == 401
    response = client.get("/instances?provider=nokia", headers=AUTH)
    assert response.status_code == 400 and "provider" in response.json["errors"]
