"""The status page as a person sees it: real callbacks through a real worker, read in a real
headless Chromium (Debian's, driven by Playwright). The screenshot is kept in
test-artifacts/status-page.png (TICKS_ARTIFACTS_DIR to put it elsewhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server

from tests.conftest import API_TOKEN, ROOT, WEBHOOK_TOKENS, load_fixture, wait_for
from workers.core import numbers, store

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("TICKS_ARTIFACTS_DIR", ROOT / "test-artifacts"))
# Chromium's own calls home fail on a closed network, many at a time: keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAILED_PHONE = "5511987654321"
HOSTILE_REASON = "<script>window.__owned = 1</script> Invalid phone number"


def chromium_executable() -> str | None:
    """Debian's Chromium (or TICKS_CHROMIUM); None lets Playwright use its own download."""
    configured = os.environ.get("TICKS_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=chromium_executable(), args=CHROMIUM_ARGS
            )
        except Exception as exc:  # no browser at all: say how to get one, never skip
            pytest.fail(
                "no Chromium to run the browser test: install Debian's `chromium` "
                f"(apt-get install chromium) or run `.venv/bin/playwright install chromium`: {exc}"
            )
        yield browser
        browser.close()


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    """Serve the app over real HTTP from a thread; return its base URL."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join()


def post(base: str, provider: str, body: dict[str, Any]) -> dict[str, Any]:
    token = WEBHOOK_TOKENS[provider][0]
    request = urllib.request.Request(
        f"{base}/webhooks/{provider}/{token}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def zapi(
    status: str, message_id: str, ago: float = 0, instance: str = "instance.id"
) -> dict[str, Any]:
    return load_fixture("zapi", "seed_sent") | {
        "status": status,
        "ids": [message_id],
        "momment": int((time.time() - ago) * 1000),
        "instanceId": instance,
    }


def greenapi_failed(message_id: str, description: str, ago: int = 0) -> dict[str, Any]:
    body = load_fixture("greenapi", "seed_failed")
    return body | {
        "idMessage": message_id,
        "timestamp": int(time.time()) - ago,
        "chatId": f"{FAILED_PHONE}@c.us",
        "description": description,
    }


@pytest.fixture
def traffic(server: str, db: Any, start_worker: Any) -> str:
    """Real callbacks, applied by a real worker: what the page should then show."""
    start_worker()
    for n in range(5):
        post(server, "zapi", zapi("SENT", f"m{n}"))
    for n in range(3):
        post(server, "zapi", zapi("RECEIVED", f"m{n}"))
    post(server, "zapi", zapi("READ", "m0"))
    post(server, "greenapi", greenapi_failed("g-old", "An older failure", ago=3 * 3600))
    post(server, "greenapi", greenapi_failed("g-new", HOSTILE_REASON))
    assert post(server, "greenapi", load_fixture("greenapi", "sent") | {"status": "vanished"})[
        "quarantined"
    ]
    wait_for(
        lambda: (
            db.execute("SELECT count(*) FROM status_events").fetchone()[0] == 11
            and db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1
        )
    )
    # One failure recorded three hours ago: in the day's counts, not the hour's.
    db.execute(
        "UPDATE status_events SET created_at = now() - interval '3 hours'"
        " WHERE message_id = 'g-old'"
    )
    # A number whose messages stop at one tick: 20 sent 15 minutes ago, 5 delivered.
    for n in range(20):
        post(server, "zapi", zapi("SENT", f"s{n}", ago=900, instance="loja-9"))
    for n in range(5):
        post(server, "zapi", zapi("RECEIVED", f"s{n}", ago=890, instance="loja-9"))
    wait_for(lambda: db.execute("SELECT count(*) FROM status_events").fetchone()[0] == 36)
    numbers.evaluate(db, datetime.now(UTC), timedelta(minutes=10))  # as the worker's watch does
    store.record_dead_letter(
        db,
        {
            "task_id": "t-1",
            "task_name": "ticks.apply_events",
            "payload": [],
            "error": "boom",
            "deliveries": 3,
        },
    )
    return server


def open_page(browser: Browser, base: str, password: str = API_TOKEN) -> tuple[Page, list[str]]:
    context = browser.new_context(
        http_credentials={"username": "ops", "password": password},
        viewport={"width": 1200, "height": 900},
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    return page, problems


def cells(page: Page, table: str, provider: str) -> list[str]:
    return (
        page.locator(f"#{table} tr", has=page.locator(f"th:text-is('{provider}')"))
        .locator("td")
        .all_inner_texts()
    )


def card(page: Page, name: str) -> list[str]:
    """The lines a person reads in a card: its number, then what the number is."""
    return page.inner_text(f"#card-{name} dd").splitlines()


def test_a_person_sees_what_ticks_did(browser, traffic):
    page, problems = open_page(browser, traffic)
    response = page.goto(f"{traffic}/")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept whether or not what follows passes
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
    assert response is not None and response.status == 200
    assert page.title() == "Ticks status"
    assert page.inner_text("#service-database") == "PostgreSQL: answering"
    assert page.inner_text("#service-broker") == "Broker: answering"

    # Counts by provider and status (sent, received, read, played, failed).
    assert cells(page, "counts-hour", "zapi") == ["25", "8", "1", "0", "0"]
    assert cells(page, "counts-hour", "greenapi") == ["0", "0", "0", "0", "1"]
    assert cells(page, "counts-day", "greenapi") == ["0", "0", "0", "0", "2"]
    assert cells(page, "counts-hour", "plug") == ["0", "0", "0", "0", "0"]

    # The cards: throughput, failures, quarantine and dead letters, the queue drained.
    assert card(page, "throughput") == ["35", "events, 0.6/min"]
    assert card(page, "failed") == ["1"]
    assert card(page, "quarantine") == ["1", "1 in 24 h"]
    assert card(page, "dead-letters") == ["1", "1 in 24 h"]
    assert card(page, "queue") == ["0", "task messages"]
    assert card(page, "queue-age") == ["0 s"]
    for name in ("failed", "quarantine", "dead-letters"):  # shown in red
        assert "bad" in (page.get_attribute(f"#card-{name}", "class") or "")

    # The latest failures, newest first, the provider's reason shown as text, phones masked.
    rows = page.locator("#failed-messages tbody tr")
    assert rows.count() == 2
    newest = rows.nth(0).locator("td").all_inner_texts()
    assert newest[2:] == ["greenapi", "g-new", "*********4321", f"failed: {HOSTILE_REASON}"]
    assert rows.nth(1).locator("td").all_inner_texts()[3] == "g-old"
    # Ordered by the first column, when Ticks recorded each (the provider's time is beside).
    assert newest[0] >= rows.nth(1).locator("td").all_inner_texts()[0]
    assert FAILED_PHONE not in page.content()

    # The chart: one bar per minute, the last ones (now) carrying this test's events.
    bars = page.locator("#throughput-chart g.bar")
    assert bars.count() == 60
    titles = [bars.nth(i).locator("title").text_content() or "" for i in range(60)]
    counted = [re.search(r": (\d+) events, (\d+) failed", t).groups() for t in titles]
    assert sum(int(events) for events, _ in counted) == 35
    assert sum(int(failed) for _, failed in counted) == 1
    assert sum(int(events) for events, _ in counted[-3:]) == 35  # recorded just now
    busiest = max(range(60), key=lambda i: int(counted[i][0]))
    assert float(bars.nth(busiest).locator("rect.events").get_attribute("height") or 0) > 0
    assert page.locator("#throughput-chart rect.failed").count() == 1
    box = page.locator("#throughput-chart").bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 100

    # Sending numbers: each one's health, the last hour's funnel and the day's small chart.
    numbers = {
        row.locator("td").nth(1).inner_text(): row.locator("td").all_inner_texts()
        for row in page.locator("#numbers tbody tr").all()
    }
    assert numbers["instance.id"][2:10] == [
        "ok",
        numbers["instance.id"][3],
        "5",
        "60%",
        "20%",
        "0%",
        "0",
        numbers["instance.id"][9],
    ]
    shop = numbers["loja-9"]
    assert shop[2] == "degraded" and shop[4:9] == ["20", "25%", "0%", "0%", "15"]
    assert "15 of 20 messages sent in the window still at sent" in shop[11]
    assert "bad" in (
        page.locator("#numbers tbody tr", has_text="loja-9").get_attribute("class") or ""
    )
    spark = page.locator("#numbers tbody tr", has_text="instance.id").locator("svg.spark polyline")
    assert spark.count() == 2 and all(spark.nth(i).get_attribute("points") for i in range(2))

    # The stylesheet loaded under the page's Content-Security-Policy; nothing was refused.
    assert page.evaluate("getComputedStyle(document.querySelector('.cards')).display") == "grid"
    assert problems == []
    page.context.close()


def test_the_browser_asks_for_the_token(browser, server):
    page, _problems = open_page(browser, server, password="wrong")
    response = page.goto(f"{server}/")
    assert response is not None and response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert "Ticks status" not in page.content()
    page.context.close()
