"""Log lines: JSON objects on stdout by default, text on request, never a webhook token."""

from __future__ import annotations

import json
import logging

import pytest

from workers.core import logs


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_fields_and_never_the_token(capsys, monkeypatch, restore_root_logging):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    logs.configure("INFO")
    logging.getLogger("ticks.test").info(
        "posted to %s", "/webhooks/zapi/s3cret", extra={"provider": "zapi", "events": 3}
    )
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["message"] == "posted to /webhooks/zapi/***"
    assert record["level"] == "INFO"
    assert record["logger"] == "ticks.test"
    assert record["provider"] == "zapi" and record["events"] == 3
    assert record["time"].endswith("+00:00")
    assert "s3cret" not in line


def test_text_lines_on_request(capsys, monkeypatch, restore_root_logging):
    monkeypatch.setenv("LOG_FORMAT", "text")
    logs.configure("INFO")
    logging.getLogger("ticks.test").warning("plain")
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("[WARNING] ticks.test: plain")


def test_an_unknown_log_format_is_refused(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="LOG_FORMAT must be json or text"):
        logs.formatter()
