"""The Grafana dashboard and the alert rules in docs/ use only metrics Ticks exposes."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from tests.conftest import API_TOKEN, ROOT
from workers.metrics import metrics

# The text format names a counter's family with its _total already.
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture
def exposed(client) -> set[str]:
    """Every series name the web's /metrics and a worker's metrics can show."""
    metrics()  # the worker's, in this process's registry
    text = client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).text
    text += generate_latest(REGISTRY).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (ticks_\w+) (\w+)$", text, re.M):
        names.update(name + suffix for suffix in SUFFIXES[kind])
    assert "ticks_queue_oldest_age_seconds" in names and "ticks_events_applied_total" in names
    return names


def used(expr: str) -> set[str]:
    return set(re.findall(r"\bticks_\w+", expr))


def test_the_dashboard_queries_only_exposed_metrics(exposed):
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert used(expr) and used(expr) <= exposed, expr


def test_the_alert_rules_are_well_formed_and_use_only_exposed_metrics(exposed):
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    [group] = rules["groups"]
    assert len(group["rules"]) >= 6
    for rule in group["rules"]:
        assert rule["alert"].startswith("Ticks")
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert used(rule["expr"]) <= exposed, rule["expr"]
