"""Quarantine and dead letters: the read-only API and the Flask commands, on real servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.conftest import API_TOKEN, load_fixture, queued
from workers.core import store

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def quarantine(db, body, provider="zapi", request_id="req-1") -> int:
    store.record_quarantine(
        db,
        {
            "request_id": request_id,
            "provider": provider,
            "reason": "validation",
            "errors": {"status": ["unknown"]},
            "raw_body": body if isinstance(body, str) else json.dumps(body),
            "content_type": "application/json",
            "received_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        },
    )
    return db.execute("SELECT id FROM quarantine WHERE request_id = %s", (request_id,)).fetchone()[
        0
    ]


def dead_letter(db, task_id="dead-1") -> int:
    event = {
        "provider": "zapi",
        "message_id": "DL-1",
        "status": "sent",
        "raw_status": "SENT",
        "occurred_at": "2026-11-22T10:00:00+00:00",
        "received_at": "2026-11-22T10:00:01+00:00",
    }
    letter = {
        "task_id": task_id,
        "task_name": "ticks.apply_events",
        "payload": [event],
        "error": "ValueError('x')",
        "deliveries": 1,
    }
    store.record_dead_letter(db, letter)
    return db.execute("SELECT id FROM dead_letters WHERE task_id = %s", (task_id,)).fetchone()[0]


# -- read-only API -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/quarantine", "/quarantine/1", "/dead-letters", "/dead-letters/1"]
)
def test_the_operations_api_needs_the_api_token(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.json["error"]


@pytest.mark.parametrize("path", ["/quarantine/1/discard", "/dead-letters/1/discard"])
def test_discarding_needs_the_api_token(client, db, path):
    response = client.post(path)
    assert response.status_code == 401
    assert response.json["error"]


def test_a_dead_letter_is_discarded_over_http_once_and_kept(client, db):
    letter = dead_letter(db)
    other = dead_letter(db, task_id="dead-2")
    response = client.post(f"/dead-letters/{letter}/discard", headers=AUTH)
    assert response.status_code == 200
    discarded_at = response.json["discarded_at"]
    assert discarded_at and response.json["replayed_at"] is None
    again = client.post(f"/dead-letters/{letter}/discard", headers=AUTH).json
    assert again["discarded_at"] == discarded_at  # discarding again changes nothing
    pending = client.get("/dead-letters", headers=AUTH).json["items"]
    assert [item["id"] for item in pending] == [other]
    everything = client.get("/dead-letters?state=all", headers=AUTH).json["items"]
    assert [item["discarded_at"] is not None for item in everything] == [True, False]
    assert client.get(f"/dead-letters/{letter}", headers=AUTH).json["payload"]  # kept whole


def test_a_task_dead_lettered_again_is_pending_again(client, db):
    """A replayed (or discarded) letter whose task fails again is the same row: it must show
    as pending again, not stay hidden as already handled."""
    from workers.core import store

    letter = dead_letter(db)
    store.mark_replayed(db, letter)
    assert client.get("/dead-letters", headers=AUTH).json["items"] == []
    again = {"task_id": "dead-1", "task_name": "ticks.apply_events", "payload": [], "error": "x"}
    assert store.record_dead_letter(db, {**again, "deliveries": 2}) == letter
    pending = client.get("/dead-letters", headers=AUTH).json["items"]
    assert [(item["id"], item["replayed_at"]) for item in pending] == [(letter, None)]


@pytest.mark.parametrize(
    ("path", "error"),
    [("/dead-letters", "no such dead letter"), ("/quarantine", "no such quarantined body")],
)
def test_discarding_what_is_not_there_is_a_404_naming_it(client, db, path, error):
    for item in (999999, 2**63):
        response = client.post(f"{path}/{item}/discard", headers=AUTH)
        assert response.status_code == 404 and response.json["error"] == error


def test_a_quarantined_body_is_discarded_over_http_as_a_dead_letter_is(client, db):
    item = quarantine(db, "not json at all")
    response = client.post(f"/quarantine/{item}/discard", headers=AUTH)
    assert response.status_code == 200 and response.json["discarded_at"]
    assert client.get("/quarantine", headers=AUTH).json["items"] == []


def test_quarantine_is_listed_and_shown(client, db):
    item = quarantine(db, {"status": "DELETED", "ids": ["Q-1"]})
    listed = client.get("/quarantine", headers=AUTH).json["items"]
    assert [(i["id"], i["provider"], i["errors"]) for i in listed] == [
        (item, "zapi", {"status": ["unknown"]})
    ]
    assert "raw_body" not in listed[0]
    shown = client.get(f"/quarantine/{item}", headers=AUTH).json
    assert json.loads(shown["raw_body"]) == {"status": "DELETED", "ids": ["Q-1"]}
    assert shown["received_at"] == "2026-11-22T10:00:00+00:00"
    assert client.get(f"/quarantine/{item + 1000}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", ["/quarantine", "/dead-letters"])
def test_an_id_past_any_row_is_404_not_500(client, db, path):
    response = client.get(f"{path}/{2**63}", headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"]


def test_dead_letters_are_listed_and_shown(client, db):
    letter = dead_letter(db)
    [listed] = client.get("/dead-letters", headers=AUTH).json["items"]
    assert (listed["id"], listed["events"], listed["replayed_at"]) == (letter, 1, None)
    shown = client.get(f"/dead-letters/{letter}", headers=AUTH).json
    assert shown["payload"][0]["message_id"] == "DL-1"


@pytest.mark.parametrize(
    ("query", "field"), [("state=done", "state"), ("limit=0", "limit"), ("limit=x", "limit")]
)
def test_a_bad_query_is_a_400_naming_the_field(client, db, query, field):
    response = client.get(f"/quarantine?{query}", headers=AUTH)
    assert response.status_code == 400
    assert field in response.json["errors"]


# -- commands ------------------------------------------------------------------------------


def run(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_replay_revalidates_enqueues_once_and_never_twice(app, db, broker):
    # Stored while the status was not understood; valid now (as after a fix).
    body = {**load_fixture("zapi", "seed_read"), "ids": ["Q-FIXED"]}
    item = quarantine(db, body)
    result = run(app, "quarantine", "replay", str(item))
    assert result.exit_code == 0, result.output
    assert f"{item}: replayed: 1 events enqueued" in result.output
    [(task, events)] = queued(broker)
    assert task == "ticks.apply_events"
    assert [(e["message_id"], e["status"], e["request_id"]) for e in events] == [
        ("Q-FIXED", "read", "req-1")
    ]
    assert broker.zcard("ticks:inflight") == 1  # published with its ledger entry

    again = run(app, "quarantine", "replay", str(item))
    assert f"{item}: already replayed" in again.output
    assert len(queued(broker)) == 1
    assert run(app, "quarantine", "list").output == ""  # no longer pending
    assert "\treplayed\t" in run(app, "quarantine", "list", "--all").output


def test_a_body_still_invalid_stays_pending_and_the_command_fails(app, db, broker):
    item = quarantine(db, {"status": "DELETED", "ids": ["Q-2"]})
    result = run(app, "quarantine", "replay", "--all")
    assert result.exit_code == 1
    assert f"{item}: still invalid" in result.output and "status" in result.output
    assert queued(broker) == []
    assert f"{item}\t" in run(app, "quarantine", "list").output


def test_a_meta_batch_still_partly_invalid_stays_pending_and_enqueues_nothing_again(
    app, db, broker
):
    """Its valid statuses were enqueued when it arrived; replay waits for the rest to validate."""
    body = load_fixture("meta", "batch_two_entries")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    item = quarantine(db, body, provider="meta")
    result = run(app, "quarantine", "replay", str(item))
    assert result.exit_code == 1
    assert f"{item}: still invalid" in result.output and "status" in result.output
    assert queued(broker) == []
    assert f"{item}\t" in run(app, "quarantine", "list").output


def test_show_and_discard(app, db):
    item = quarantine(db, "not json at all")
    shown = run(app, "quarantine", "show", str(item))
    assert json.loads(shown.output)["raw_body"] == "not json at all"
    assert run(app, "quarantine", "discard", str(item)).exit_code == 0
    assert run(app, "quarantine", "list").output == ""
    assert "\tdiscarded\t" in run(app, "quarantine", "list", "--all").output
    assert run(app, "quarantine", "discard", "999999").exit_code != 0


def test_both_lists_show_pending_ones_and_all_with_the_same_option(app, db):
    letter = dead_letter(db)
    item = quarantine(db, "not json at all")
    for group, number in (("deadletters", letter), ("quarantine", item)):
        assert f"{number}\t" in run(app, group, "list").output
        discarded = run(app, group, "discard", str(number))
        assert (discarded.exit_code, discarded.output) == (0, "discarded 1\n")
        assert run(app, group, "list").output == ""  # pending only, by default
        assert f"{number}\t" in run(app, group, "list", "--all").output
    assert "\tdiscarded=20" in run(app, "deadletters", "list", "--all").output
    # The old flag still works (pending only, the default now), and is not advertised.
    assert run(app, "deadletters", "list", "--pending").output == ""
    assert "--pending" not in run(app, "deadletters", "list", "--help").output
    fresh = dead_letter(db, task_id="dead-2")
    missing = run(app, "deadletters", "discard", str(fresh), "999999")
    assert missing.exit_code != 0 and "no dead letter 999999" in missing.output
    assert f"{fresh}\t" in run(app, "deadletters", "list").output  # all or none: still pending


def test_a_discarded_dead_letter_is_not_replayed_with_all(app, db, broker):
    letter = dead_letter(db)
    assert run(app, "deadletters", "discard", str(letter)).exit_code == 0
    assert run(app, "deadletters", "replay", "--all").exit_code == 0
    assert queued(broker) == []


def test_deadletters_commands_list_and_replay_with_the_ledger(app, db, broker):
    letter = dead_letter(db)
    assert f"{letter}\t" in run(app, "deadletters", "list").output
    result = run(app, "deadletters", "replay", "--all")
    assert result.exit_code == 0, result.output
    [(task, payload)] = queued(broker)
    assert task == "ticks.apply_events" and payload[0]["message_id"] == "DL-1"
    assert broker.zcard("ticks:inflight") == 1
    assert run(app, "deadletters", "list", "--pending").output == ""


def test_limit_bounds_both_listings(client, db):
    for n in range(3):
        dead_letter(db, task_id=f"dead-{n}")
        quarantine(db, {"status": "DELETED"}, request_id=f"req-{n}")
    for path in ("/dead-letters", "/quarantine"):
        items = client.get(f"{path}?limit=2", headers=AUTH).json["items"]
        assert len(items) == 2 and items[0]["id"] < items[1]["id"]  # oldest first
