"""The web's Prometheus metrics: every callback counted by outcome, nothing secret in them."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.conftest import API_TOKEN, free_port, load_fixture, make_app

ZAPI_URL = "/webhooks/zapi/zapi-secret-one"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def callbacks(provider: str, outcome: str, reason: str = "") -> float:
    labels = {"provider": provider, "outcome": outcome, "reason": reason}
    return REGISTRY.get_sample_value("ticks_callbacks_total", labels) or 0.0


def enqueued(provider: str) -> float:
    return REGISTRY.get_sample_value("ticks_events_enqueued_total", {"provider": provider}) or 0.0


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def test_metrics_need_the_api_token(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "ticks_callbacks_total" in response.text


@pytest.mark.parametrize(
    ("request_args", "outcome", "reason"),
    [
        (("post", ZAPI_URL, {"json": load_fixture("zapi", "seed_sent")}), "accepted", ""),
        (("post", ZAPI_URL, {"json": {"type": "ReceivedCallback"}}), "ignored", ""),
        (("post", ZAPI_URL, {"json": {"status": "SENT"}}), "quarantined", ""),
        (("post", "/webhooks/zapi/wrong", {"json": {}}), "unauthorized", ""),
        (
            ("post", ZAPI_URL, {"data": "{", "content_type": "application/json"}),
            "rejected",
            "invalid_json",
        ),
        (
            ("post", ZAPI_URL, {"data": "x", "content_type": "text/plain"}),
            "rejected",
            "unsupported_media_type",
        ),
        (("post", ZAPI_URL, {"json": {"x": "y" * 70000}}), "rejected", "too_large"),
        (("get", ZAPI_URL, {}), "rejected", "method_not_allowed"),
    ],
)
def test_each_callback_is_counted_once_by_outcome(client, request_args, outcome, reason):
    method, url, kwargs = request_args
    before = callbacks("zapi", outcome, reason)
    getattr(client, method)(url, **kwargs)
    assert callbacks("zapi", outcome, reason) == before + 1


def test_unknown_providers_share_one_label(client):
    before = callbacks("unknown", "rejected", "unknown_provider")
    client.post("/webhooks/nope-1/t", json={})
    client.post("/webhooks/nope-2/t", json={})
    assert callbacks("unknown", "rejected", "unknown_provider") == before + 2


def test_accepted_events_are_counted(client):
    before = enqueued("zapi")
    client.post(ZAPI_URL, json=load_fixture("zapi", "multi_ids"))
    assert enqueued("zapi") == before + 3


def test_a_dead_broker_is_counted_as_unavailable(database_url):
    client = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    before = callbacks("zapi", "broker_unavailable")
    assert client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent")).status_code == 503
    assert callbacks("zapi", "broker_unavailable") == before + 1


def test_latency_is_labelled_by_route_never_by_path(client):
    client.post(ZAPI_URL, json=load_fixture("zapi", "seed_sent"))
    text = client.get("/metrics", headers=AUTH).text
    assert 'route="/webhooks/<provider>/<token>"' in text
    assert "zapi-secret-one" not in text
    assert "ticks_enqueue_duration_seconds_count" in text
    assert "ticks_publish_batch_callbacks_count" in text


def gauge(text: str, name: str) -> float:
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


def test_queue_depth_and_the_age_of_the_oldest_waiting_message(client, broker):
    text = client.get("/metrics", headers=AUTH).text
    assert gauge(text, "ticks_broker_up") == 1
    assert gauge(text, "ticks_queue_messages") == 0
    assert gauge(text, "ticks_queue_oldest_age_seconds") == 0
    for n in range(3):  # no worker: they wait
        body = {**load_fixture("zapi", "seed_sent"), "ids": [f"Q{n}"]}
        assert client.post(ZAPI_URL, json=body).status_code == 200
    [oldest] = broker.zrange("ticks:inflight", 0, 0)
    broker.zadd("ticks:inflight", {oldest: broker.zscore("ticks:inflight", oldest) - 90})
    text = client.get("/metrics", headers=AUTH).text
    assert gauge(text, "ticks_queue_messages") == 3
    assert gauge(text, "ticks_inflight_messages") == 3
    assert gauge(text, "ticks_unacked_messages") == 0
    assert 90 <= gauge(text, "ticks_queue_oldest_age_seconds") < 100


def test_a_dead_broker_does_not_break_the_scrape(database_url):
    client = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert gauge(response.text, "ticks_broker_up") == 0
    assert "ticks_callbacks_total" in response.text
