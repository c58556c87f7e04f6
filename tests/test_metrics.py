"""The web's Prometheus metrics: every callback counted by outcome, nothing secret in them."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.conftest import API_TOKEN, load_fixture, make_app

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
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_app(database_url, f"redis://127.0.0.1:{port}/0").test_client()
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
