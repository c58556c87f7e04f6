"""Outbound webhooks against a real database and a real HTTP receiver, one step at a time:
the pump, the lanes, signing, retries, the dead letters, the circuit, the address guard."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.events import StatusEvent
from tests.conftest import API_TOKEN
from tests.receiver import Answer, Receiver, verified
from workers.core import store
from workers.outbound import deliveries, subscriptions
from workers.outbound import post as outbound

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def apply(db, *events: tuple[str, str]) -> None:
    """Apply (message id, status) events, each in its own committed transaction."""
    for number, (message_id, status) in enumerate(events):
        event = StatusEvent(
            provider="zapi",
            message_id=message_id,
            status=status,
            raw_status=status.upper(),
            occurred_at=T0 + timedelta(seconds=number),
            received_at=T0,
            phone="5544999999999",
        )
        with db.transaction():
            store.apply_events(db, [event])


def subscribe(db, url="http://127.0.0.1:9/", providers=None, statuses=None, batch=1):
    with db.transaction():
        return subscriptions.create(db, url, providers, statuses, batch)


def pending(db, subscription_id):
    rows = db.execute(
        "SELECT lane, body FROM deliveries WHERE subscription_id = %s"
        " AND delivered_at IS NULL AND dead_at IS NULL ORDER BY id",
        (subscription_id,),
    ).fetchall()
    return [
        (lane, document if isinstance(document := json.loads(body), list) else [document])
        for lane, body in rows
    ]


def deliver_all(db, rounds: int = 20) -> None:
    """What the delivery worker does, in this process: pump, lease, send, until idle."""
    for _ in range(rounds):
        for subscription_id in deliveries.subscription_ids(db):
            deliveries.pump(db, subscription_id)
        leased = deliveries.lease_due(db)
        if not leased:
            return
        for delivery_id, token in leased:
            deliveries.send_lane(db, delivery_id, token)


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def private_allowed(monkeypatch):
    monkeypatch.setenv("SUBSCRIPTIONS_ALLOW_PRIVATE", "true")
    monkeypatch.setattr(deliveries, "TIMEOUT", 1.0)


def test_signature_is_standard_webhooks():
    # The example of the Standard Webhooks reference libraries (svix's "verifying manually").
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = outbound.sign(
        secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_subscription_receives_the_changes_from_its_creation_on(db):
    apply(db, ("BEFORE", "sent"))
    subscription_id, secret = subscribe(db)
    assert secret.startswith("whsec_")
    apply(db, ("M1", "sent"), ("M1", "read"), ("M1", "sent"), ("M2", "received"))
    assert deliveries.pump(db, subscription_id) == 3  # the repeat of sent took no effect
    rows = pending(db, subscription_id)
    assert [(c["data"]["message_id"], c["data"]["status"]) for _, (c,) in rows] == [
        ("M1", "sent"),
        ("M1", "read"),
        ("M2", "received"),
    ]
    first = rows[0][1][0]
    assert first["type"] == "message.status"
    assert (
        first["data"]["previous_status"] is None
        and rows[1][1][0]["data"]["previous_status"] == "sent"
    )
    assert rows[0][0] == rows[1][0] == deliveries.lane_of("zapi", "M1")
    assert deliveries.pump(db, subscription_id) == 0  # its cursor moved: nothing twice
    assert len(pending(db, subscription_id)) == 3


def test_filters_and_batches(db):
    failed_only, _ = subscribe(db, statuses=["failed"])
    batched, _ = subscribe(db, providers=["zapi"], batch=2)
    other, _ = subscribe(db, providers=["meta"])
    apply(db, ("A", "sent"), ("A", "received"), ("A", "read"), ("B", "failed"))
    for subscription_id in (failed_only, batched, other):
        deliveries.pump(db, subscription_id)
    assert [
        [c["data"]["message_id"] for c in changes] for _, changes in pending(db, failed_only)
    ] == [["B"]]
    assert pending(db, other) == []
    batches = [[c["data"]["status"] for c in changes] for _, changes in pending(db, batched)]
    assert sorted(batches) == sorted([["sent", "received"], ["read"], ["failed"]])


def test_deliveries_are_signed_and_in_order_per_message(db, receiver):
    subscription_id, secret = subscribe(db, url=receiver.url)
    messages = [f"M{n}" for n in range(12)]
    apply(db, *[(m, s) for s in ("sent", "received", "read", "played") for m in messages])
    deliver_all(db)
    got = receiver.delivered()
    assert len(got) == 48
    assert all(verified(secret, r) for r in got)
    assert len({r.headers["webhook-id"] for r in got}) == 48
    assert got[0].headers["content-type"] == "application/json"
    for message_id in messages:
        statuses = [
            r.document["data"]["status"]
            for r in got
            if r.document["data"]["message_id"] == message_id
        ]
        assert statuses == ["sent", "received", "read", "played"]
    assert pending(db, subscription_id) == []


def test_a_failed_attempt_waits_its_backoff_and_holds_its_lane(db, receiver, monkeypatch):
    receiver.behaviour = lambda n, r: Answer(500)
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"), ("M1", "read"))
    deliver_all(db)
    assert len(receiver.received) == 1  # the read waits behind the sent
    row = db.execute(
        "SELECT attempts, last_status, last_error, extract(epoch FROM next_attempt_at - now())"
        " FROM deliveries WHERE subscription_id = %s ORDER BY id LIMIT 1",
        (subscription_id,),
    ).fetchone()
    assert row[:3] == (1, 500, "HTTP 500")
    assert 5 * 0.8 - 1 <= float(row[3]) <= 5 * 1.2  # the first step of the schedule, jittered
    assert deliveries.lease_due(db) == []  # not due yet
    db.execute("UPDATE deliveries SET next_attempt_at = now()")
    receiver.behaviour = lambda n, r: Answer(200)
    deliver_all(db)
    got = receiver.received
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]  # the same, retried
    assert [r.document["data"]["status"] for r in got[1:]] == ["sent", "read"]


def test_the_schedule_backs_off_and_honours_retry_after():
    delays = [deliveries.next_delay(n) for n in range(1, 12)]
    for delay, base in zip(delays, (*deliveries.RETRY_SCHEDULE, 28800, 28800), strict=False):
        assert base * 0.8 <= delay <= base * 1.2
    assert deliveries.next_delay(1, retry_after=120) >= 120
    assert deliveries.next_delay(1, retry_after=10**9) <= 3600 * 1.0


def test_past_its_age_a_delivery_is_dead_and_replays(db, receiver, monkeypatch):
    monkeypatch.setattr(deliveries, "MAX_AGE", 2.0)
    receiver.behaviour = lambda n, r: Answer(503)
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"), ("M1", "read"))
    deliver_all(db)  # 5 s backoff > 2 s of life: dead at once, and the lane moves on
    db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE dead_at IS NULL")
    deliver_all(db)
    dead = subscriptions.dead(db, subscription_id, 10)
    assert [row["last_error"] for row in dead] == ["HTTP 503", "HTTP 503"]
    assert pending(db, subscription_id) == []
    receiver.behaviour = lambda n, r: Answer(204)
    with db.transaction():
        assert subscriptions.replay(db, subscription_id, [dead[0]["id"]], 60) == 1
    deliver_all(db)
    assert [r.document["data"]["status"] for r in receiver.delivered()] == ["sent"]
    assert len(subscriptions.dead(db, subscription_id, 10)) == 1


def test_the_circuit_opens_after_five_failures_then_probes_once(db, receiver):
    receiver.behaviour = lambda n, r: Answer(500)
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, *[(f"M{n}", "sent") for n in range(40)])
    deliver_all(db)
    assert len(receiver.received) == deliveries.LANES  # one per lane, then all wait
    failures, paused = db.execute(
        "SELECT failures, paused_until > now() FROM subscriptions WHERE id = %s",
        (subscription_id,),
    ).fetchone()
    assert failures == deliveries.LANES and paused
    db.execute("UPDATE deliveries SET next_attempt_at = now()")
    assert deliveries.lease_due(db) == []  # open: nothing goes out
    db.execute("UPDATE subscriptions SET paused_until = now()")
    probe = deliveries.lease_due(db)
    assert len(probe) == 1  # half-open: one probe
    assert deliveries.lease_due(db) == []
    receiver.behaviour = lambda n, r: Answer(200)
    deliveries.send_lane(db, *probe[0])
    assert db.execute(
        "SELECT failures, paused_until FROM subscriptions WHERE id = %s", (subscription_id,)
    ).fetchone() == (0, None)
    deliver_all(db)
    assert len(receiver.delivered()) == 40


def test_timeouts_closed_connections_and_redirects_are_failed_attempts(receiver):
    answers = {0: Answer(200, delay=3), 1: Answer(close=True), 2: Answer(302)}
    receiver.behaviour = lambda n, r: answers[n]
    results = [
        outbound.post(receiver.url, b"{}", {}, timeout=1, allow_private=True) for _ in range(3)
    ]
    assert [r.ok for r in results] == [False, False, False]
    assert "timed out" in results[0].error.lower()
    assert results[2].error == "HTTP 302"


def test_a_task_whose_post_failed_fails_and_one_that_lost_its_lease_succeeds(
    db, receiver, monkeypatch
):
    """Flower and the worker's log show a ticks.deliver task that delivered nothing as failed
    (its reason in the exception), not as succeeded; the attempt is recorded all the same."""
    monkeypatch.setenv("SUBSCRIPTIONS_ALLOW_PRIVATE", "false")  # the worker's own setting
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    deliveries.pump(db, subscription_id)
    [(delivery_id, token)] = deliveries.lease_due(db)
    result = deliveries.deliver.apply(args=[delivery_id, token])
    assert result.state == "FAILURE"
    assert isinstance(result.result, deliveries.DeliveryFailed)
    assert str(result.result).startswith(f"delivery {delivery_id} to http://127.0.0.1:")
    assert "failed: refused: resolves to a private or loopback address" in str(result.result)
    assert receiver.received == []
    [(attempts, error)] = db.execute("SELECT attempts, last_error FROM deliveries").fetchall()
    assert attempts == 1 and error.startswith("refused: resolves to a private")
    # A sender whose lease ran out meanwhile POSTs nothing: another has it, nothing failed.
    assert deliveries.deliver.apply(args=[delivery_id, token]).state == "SUCCESS"
    monkeypatch.setenv("SUBSCRIPTIONS_ALLOW_PRIVATE", "true")
    db.execute("UPDATE deliveries SET next_attempt_at = now()")
    [(delivery_id, token)] = deliveries.lease_due(db)
    delivered = deliveries.deliver.apply(args=[delivery_id, token])
    assert (delivered.state, delivered.result) == ("SUCCESS", 1)


def test_the_list_says_why_a_subscription_fails(app, db, monkeypatch):
    """Health alone ("failing (2 in a row)") hid that the worker refused the receiver."""
    monkeypatch.setenv("SUBSCRIPTIONS_ALLOW_PRIVATE", "false")
    subscribe(db, url="http://127.0.0.1:9/hook")
    apply(db, ("M1", "sent"))
    deliver_all(db)
    db.execute("UPDATE deliveries SET next_attempt_at = now()")
    deliver_all(db)
    listed = app.test_cli_runner().invoke(args=["subscriptions", "list"]).output
    assert "failing (2 in a row)" in listed
    assert "\tlast_error=refused: resolves to a private or loopback address (127.0.0.1); " in listed
    assert "SUBSCRIPTIONS_ALLOW_PRIVATE=true to allow it, for the delivery worker too" in listed
    db.execute("UPDATE subscriptions SET failures = 0")  # healthy again: no error shown
    listed = app.test_cli_runner().invoke(args=["subscriptions", "list"]).output
    assert listed.rstrip("\n").endswith("\tlast_error=-")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
        "http://0x7f.1/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest",  # NAT64 of 169.254.169.254
        "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "http://[::7f00:1]/hook",  # IPv4-compatible 127.0.0.1
    ],
)
def test_private_and_loopback_receivers_are_refused(url):
    with pytest.raises(outbound.Refused, match="SUBSCRIPTIONS_ALLOW_PRIVATE"):
        outbound.resolve(url, allow_private=False)
    answer = outbound.post(url, b"{}", {}, timeout=1, allow_private=False)
    assert not answer.ok and answer.error.startswith("refused")


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///x", "x"])
def test_what_is_not_an_http_url_is_refused(url):
    with pytest.raises(outbound.Refused):
        outbound.resolve(url, allow_private=True)


def test_a_public_address_is_allowed(monkeypatch):
    def public(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", public)
    assert outbound.resolve("https://hooks.example.com/x", allow_private=False) == ["93.184.215.14"]


def test_the_shown_url_keeps_no_credentials_or_query():
    shown = outbound.shown_url("https://user:pw@hooks.example.com:8443/in?token=abc")
    assert shown == "https://hooks.example.com:8443/…"
    slack = outbound.shown_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET")
    assert slack == "https://hooks.slack.com/…"  # Slack's and Discord's secrets are the path
    assert outbound.shown_url("http://[::1]:81/") == "http://[::1]:81/"


def test_a_rotated_secret_signs_beside_the_new_one(db, receiver):
    subscription_id, old = subscribe(db, url=receiver.url)
    with db.transaction():
        new = subscriptions.rotate_secret(db, subscription_id, timedelta(hours=1))
    apply(db, ("M1", "sent"))
    deliver_all(db)
    (got,) = receiver.delivered()
    assert verified(old, got) and verified(new, got)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    with db.transaction():
        subscriptions.rotate_secret(db, subscription_id, timedelta(0))
    apply(db, ("M1", "read"))
    deliver_all(db)
    assert len(receiver.delivered()[-1].headers["webhook-signature"].split(" ")) == 1


def test_a_lost_lease_is_sent_again_with_the_same_id(db, receiver):
    subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    deliveries.pump(db, deliveries.subscription_ids(db)[0])
    (first,) = deliveries.lease_due(db)  # a worker took it, then died
    assert deliveries.lease_due(db) == []  # held while its lease lasts
    db.execute("UPDATE deliveries SET leased_until = now() - interval '1 second'")
    (again,) = deliveries.lease_due(db)
    assert again[0] == first[0] and again[1] != first[1]
    assert deliveries.send_lane(db, *first) == (0, None)  # the dead worker's token is void
    assert deliveries.send_lane(db, *again) == (1, None)
    assert len(receiver.delivered()) == 1


# -- the commands --------------------------------------------------------------------------


def test_add_prints_the_id_and_the_secret_each_on_a_line(app, db, receiver):
    result = app.test_cli_runner().invoke(
        args=["subscriptions", "add", receiver.url, "--provider", "zapi", "--status", "failed"]
    )
    assert result.exit_code == 0, result.output
    subscription_id, secret = result.output.splitlines()
    assert subscription_id.startswith("sub_") and secret.startswith("whsec_")
    listed = app.test_cli_runner().invoke(args=["subscriptions", "list"]).output
    assert subscription_id in listed and "zapi,failed" in listed and "healthy" in listed
    assert "token=receiver" not in listed  # a receiver's query may hold its secret
    removed = app.test_cli_runner().invoke(args=["subscriptions", "remove", subscription_id])
    assert removed.exit_code == 0
    assert app.test_cli_runner().invoke(args=["subscriptions", "list"]).output == ""


def test_add_refuses_a_private_receiver_unless_allowed(app, db):
    app.config["SUBSCRIPTIONS_ALLOW_PRIVATE"] = False
    result = app.test_cli_runner().invoke(args=["subscriptions", "add", "http://127.0.0.1/x"])
    assert result.exit_code == 2
    assert "SUBSCRIPTIONS_ALLOW_PRIVATE" in result.output
    bad = app.test_cli_runner().invoke(
        args=["subscriptions", "add", "https://hooks.example.com/", "--status", "pending"]
    )
    assert bad.exit_code == 2 and "--status" in bad.output


def test_rotate_and_replay_name_what_they_act_on(app, db):
    runner = app.test_cli_runner()
    assert (
        "no subscription sub_nope"
        in runner.invoke(args=["subscriptions", "rotate-secret", "sub_nope"]).output
    )
    assert runner.invoke(args=["subscriptions", "replay", "sub_nope"]).exit_code == 2


def test_the_feed_envelope_is_the_change_of_get_changes(db):
    subscription_id, _ = subscribe(db)
    apply(db, ("M1", "failed"))
    deliveries.pump(db, subscription_id)
    ((_, (posted,)),) = pending(db, subscription_id)
    (row,) = store.fetch_changes(db, (0, 0), 10)
    assert posted["data"] == json.loads(json.dumps(store.change_document(row)))
    assert set(posted) == {"type", "timestamp", "data"}
    assert time.time() - datetime.fromisoformat(posted["timestamp"]).timestamp() < 60


def test_the_status_page_and_the_metrics_show_a_failing_subscription(client, db, receiver):
    receiver.behaviour = lambda n, r: Answer(500)
    failing, _ = subscribe(db, url=receiver.url)
    healthy, _ = subscribe(db, url="https://hooks.example.com/in?token=secret", statuses=["read"])
    apply(db, ("M1", "sent"), ("M2", "sent"))
    deliveries.pump(db, failing)
    deliveries.send_lane(db, *deliveries.lease_due(db)[0])
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    page = client.get("/", headers=bearer).get_data(as_text=True)
    table = page.split('id="subscriptions"')[1].split("</table>")[0]
    assert failing in table and "failing (1 in a row)" in table and "HTTP 500" in table
    assert healthy in table and "https://hooks.example.com/…" in table
    assert "token=secret" not in page and "token=receiver" not in page
    metrics = client.get("/metrics", headers=bearer).get_data(as_text=True)
    assert f'ticks_delivery_backlog{{subscription="{failing}"}} 2.0' in metrics
    assert f'ticks_delivery_backlog{{subscription="{healthy}"}} 0.0' in metrics
    assert f'ticks_delivery_circuit_open{{subscription="{failing}"}} 0.0' in metrics


def test_without_subscriptions_the_page_says_how_to_add_one(client):
    page = client.get("/", headers={"Authorization": f"Bearer {API_TOKEN}"}).get_data(as_text=True)
    assert "flask --app app subscriptions add URL" in page


def test_the_readmes_verification_example_accepts_a_real_delivery_and_nothing_else(db, receiver):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("Verifying one, in Python")[1].split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(example, namespace)  # noqa: S102 - the README's own code
    verify = namespace["verify"]
    _, secret = subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    deliver_all(db)
    (got,) = receiver.delivered()
    assert verify(secret, got.headers, got.body)
    assert not verify(secret, got.headers, got.body.replace(b"sent", b"read"))
    assert not verify(outbound.new_secret(), got.headers, got.body)
    stale = {**got.headers, "webhook-timestamp": str(int(time.time()) - 600)}
    assert not verify(secret, stale, got.body)


@pytest.fixture
def tls_receiver(tmp_path):
    """A receiver on https://localhost with a certificate of its own CA."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    started = Receiver().start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    started.server.socket = context.wrap_socket(started.server.socket, server_side=True)
    yield started, cert
    started.stop()


def test_https_receivers_have_their_certificate_checked_for_the_urls_host(
    tls_receiver, monkeypatch
):
    receiver, cert = tls_receiver
    url = f"https://localhost:{receiver.server.server_address[1]}/in"
    untrusted = outbound.post(url, b"{}", {}, timeout=2, allow_private=True)
    assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the receiver's CA trusted
    trusted = outbound.post(url, b"{}", {}, timeout=2, allow_private=True)
    assert trusted.ok, trusted.error
    assert (
        receiver.delivered()[-1].headers["host"] == f"localhost:{receiver.server.server_address[1]}"
    )
    wrong_name = url.replace("localhost", "127.0.0.1")  # connects, but the name is not its
    assert not outbound.post(wrong_name, b"{}", {}, timeout=2, allow_private=True).ok


def test_once_the_receiver_answers_again_every_lane_resumes_at_once(db, receiver):
    receiver.behaviour = lambda n, r: Answer(500)
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, *[(f"M{n}", "sent") for n in range(16)])
    deliver_all(db)  # every lane's head failed, each now waits 5 s or so
    assert deliveries.lease_due(db) == []
    db.execute(  # one of them is due first (its backoff was the shortest)
        "UPDATE deliveries SET next_attempt_at = now() WHERE id = (SELECT min(id) FROM deliveries)"
    )
    db.execute("UPDATE subscriptions SET paused_until = now()")  # its circuit's probe is due
    receiver.behaviour = lambda n, r: Answer(200)
    deliver_all(db)  # that one succeeds: the others are due at once, not in 5 s
    assert len(receiver.delivered()) == 16
    assert pending(db, subscription_id) == []


def test_an_internationalised_host_is_sent_as_punycode_and_credentials_decoded(
    receiver, monkeypatch
):
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, *a, **kw: real("127.0.0.1", port, *a, **kw)
    )
    port = receiver.server.server_address[1]
    answer = outbound.post(
        f"http://us%40er:p%40ss@пример.рф:{port}/in", b"{}", {}, timeout=2, allow_private=True
    )
    assert answer.ok, answer.error
    (got,) = receiver.delivered()
    assert got.headers["host"] == f"xn--e1afmkfd.xn--p1ai:{port}"
    assert got.headers["authorization"] == "Basic " + base64.b64encode(b"us@er:p@ss").decode()


def test_a_receiver_failing_for_weeks_keeps_its_pause_at_the_cap(db, receiver):
    receiver.behaviour = lambda n, r: Answer(500)
    subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    db.execute("UPDATE subscriptions SET failures = 5000")  # a probe every 15 min for weeks
    deliver_all(db)
    failures, pause = db.execute(
        "SELECT failures, extract(epoch FROM paused_until - now()) FROM subscriptions"
    ).fetchone()
    assert failures == 5001 and deliveries.PAUSE_MAX - 5 <= float(pause) <= deliveries.PAUSE_MAX


def test_a_sender_whose_lease_ran_out_in_the_queue_sends_nothing(db, receiver):
    subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    deliveries.pump(db, deliveries.subscription_ids(db)[0])
    (leased,) = deliveries.lease_due(db)
    db.execute("UPDATE deliveries SET leased_until = now() - interval '1 second'")
    assert deliveries.send_lane(db, *leased).sent == 0  # the pump may lease it to another
    assert receiver.received == []


def test_a_replayed_dead_letter_joins_its_lane_without_a_second_sender(db, receiver, monkeypatch):
    monkeypatch.setattr(deliveries, "MAX_AGE", 2.0)
    receiver.behaviour = lambda n, r: Answer(500)
    subscription_id, _ = subscribe(db, url=receiver.url)
    apply(db, ("M1", "sent"))
    deliver_all(db)  # dead at once: its backoff outlives its 2 s
    (dead,) = subscriptions.dead(db, subscription_id, 10)
    receiver.behaviour = lambda n, r: Answer(200)
    apply(db, ("M1", "read"), ("M1", "played"))
    deliveries.pump(db, subscription_id)
    (head,) = deliveries.lease_due(db)  # the lane's read is being sent...
    with db.transaction():  # ...when the dead sent is replayed
        subscriptions.replay(db, subscription_id, [dead["id"]], 60)
    assert deliveries.send_lane(db, *head).sent == 3  # the one sender takes all three
    assert deliveries.lease_due(db) == []
    statuses = [r.document["data"]["status"] for r in receiver.delivered()]
    assert statuses == ["read", "sent", "played"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("DELIVERY_TIMEOUT", "nan"), ("DELIVERY_MAX_AGE", "-1"), ("DELIVERY_POLL_SECONDS", "x")],
)
def test_a_bad_delivery_setting_stops_the_start_naming_it(name, value):
    env = {**os.environ, name: value}
    result = subprocess.run(
        [sys.executable, "-c", "import workers.outbound.deliveries"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode != 0
    assert f"{name} must be a number of seconds" in result.stderr
