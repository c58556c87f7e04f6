"""Number health: is each sending number (instance) delivering, right now?

An instance's health is the worse of what its provider reported of its connection (instances,
workers/core/store.py) and what its traffic shows (insight_counts, workers/core/insights.py),
in this order from good to bad:

- ``ok``;
- ``degraded``: of the messages sent over the last WINDOW (30 min) more than STUCK_AFTER ago,
  at least DEGRADED_MIN_SENT (20), half or more still at sent; or a failure class spiking: its
  failures among the messages sent in the last SPIKE_WINDOW (5 min) above max(5, 3 x its usual
  count per 5 minutes over the day before);
- ``silent``: messages sent (at least SILENT_MIN_SENT, 5) over the window more than STUCK_AFTER
  ago, and not one later status of any kind for them: the provider's status webhook itself
  may be broken;
- ``disconnected``, ``restricted``, ``banned``: the provider said so (a connection event), or
  its failures did over the window (Meta 131048, Green-API's yellowCard, Z-API's SHADOW_BAN:
  restricted).

evaluate() runs in a status worker (workers/lifecycle/watch.py), one at a time: each change of
an instance's health is kept in instance_health and written to the change feed (kind
'instance'), whence GET /changes and the subscriptions' instance.health webhooks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from schemas.failures import CLASSES, LONG_DIGITS
from schemas.statuses import HEALTHS

ORDER = HEALTHS
REPORTED = {"connected": "ok", "connecting": "ok", "disconnected": "disconnected"}
# Failures that say what became of the number itself.
CODES = {
    "policy_or_quality:131048": "restricted",  # Meta: spam rate limit on this number
    "policy_or_quality:yellowCard": "restricted",  # Green-API: sending suspended
    "policy_or_quality:SHADOW_BAN": "restricted",  # Z-API: sending restricted for the number
}
WINDOW = timedelta(minutes=30)
SPIKE_WINDOW = timedelta(minutes=5)
USUAL_OVER = timedelta(days=1)
DEGRADED_MIN_SENT = 20
SILENT_MIN_SENT = 5
STUCK_SHARE = 0.5  # degraded from half the window's messages stuck
EASED = 0.8  # and back to ok only under 40% (a spike: under 80% of its threshold)
SPIKE_FLOOR = 5
SPIKE_FACTOR = 3
SAMPLES = 3
LOCK_ID = 0x7469636B73_68  # one evaluator at a time

# The counts an evaluation reads: per instance and metric, over the judged window (sent more
# than STUCK_AFTER ago), over the last 5 minutes, and over the day before them.
TRAFFIC = """
SELECT provider, instance_id, metric,
       coalesce(sum(count) FILTER (WHERE minute >= %(window_start)s
                                     AND minute < %(stuck_before)s), 0)::bigint,
       coalesce(sum(count) FILTER (WHERE minute >= %(window_start)s), 0)::bigint,
       coalesce(sum(count) FILTER (WHERE minute >= %(spike_start)s), 0)::bigint,
       coalesce(sum(count) FILTER (WHERE minute < %(spike_start)s), 0)::bigint
FROM insight_counts
WHERE minute >= %(usual_start)s AND instance_id <> ''
  AND (metric IN ('sent', 'at_sent') OR metric LIKE 'failure:%%')
GROUP BY 1, 2, 3
"""
REPORTS = "SELECT provider, instance_id, state, raw_state, reason FROM instances"
KEPT = "SELECT provider, instance_id, health FROM instance_health"
SAMPLE_STUCK = """
SELECT message_id FROM messages
WHERE provider = %(provider)s AND instance_id = %(instance_id)s AND status = 'sent'
  AND created_at >= %(window_start)s - interval '1 hour'
  AND sent_at >= %(window_start)s AND sent_at < %(stuck_before)s
ORDER BY sent_at LIMIT %(samples)s
"""
SAMPLE_FAILED = """
SELECT message_id FROM messages
WHERE provider = %(provider)s AND instance_id = %(instance_id)s AND status = 'failed'
  AND created_at >= %(window_start)s - interval '1 hour'
  AND failure_key = ANY(%(keys)s)
ORDER BY failed_at DESC LIMIT %(samples)s
"""
UPSERT = """
INSERT INTO instance_health AS h (provider, instance_id, health, since, reason, figures,
                                  checked_at)
VALUES (%(provider)s, %(instance_id)s, %(health)s, %(now)s, %(reason)s, %(figures)s, %(now)s)
ON CONFLICT (provider, instance_id) DO UPDATE SET
    since = CASE WHEN h.health = EXCLUDED.health THEN h.since ELSE EXCLUDED.since END,
    health = EXCLUDED.health, reason = EXCLUDED.reason, figures = EXCLUDED.figures,
    checked_at = EXCLUDED.checked_at
"""
FEED = """
INSERT INTO changes (kind, provider, message_id, instance_id, status, previous_status,
                     occurred_at, failure_reason, figures)
VALUES ('instance', %(provider)s, '', %(instance_id)s, %(health)s, %(previous)s, %(now)s,
        %(reason)s, %(figures)s)
"""


@dataclass
class Verdict:
    """An instance's health, why, and the figures behind it."""

    health: str = "ok"
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    sample_keys: list[str] = field(default_factory=list)  # failures to name messages by

    def worse(self, other: Verdict) -> Verdict:
        return other if ORDER.index(other.health) > ORDER.index(self.health) else self


@dataclass
class Change:
    provider: str
    instance_id: str
    previous: str | None
    verdict: Verdict


def judge(
    traffic: dict[str, tuple[int, int, int, int]],
    report: tuple[str, str, str | None] | None,
    window_minutes: int,
    previous: str | None = None,
) -> Verdict:
    """One instance's health from its counts (metric -> judged, window, last 5 min, the day
    before) and its provider's last report (state, raw state, reason). A number already
    ``degraded`` stays so until its traffic is clearly better (EASED: a fifth under the
    thresholds), so one hovering at a threshold does not change health at every watch."""
    eased = EASED if previous == "degraded" else 1.0
    verdict = Verdict()
    if report is not None:
        state, raw, why = report
        reported = REPORTED.get(state, state)
        if reported != "ok":
            # The provider's own words, a long run of digits (a number) left out.
            words = LONG_DIGITS.sub("#", f"{raw}: {why}" if why else raw)
            verdict = verdict.worse(
                Verdict(reported, f"the provider reported {words}", {"reported": state})
            )
    sent = traffic.get("sent", (0, 0, 0, 0))[0]
    stuck = traffic.get("at_sent", (0, 0, 0, 0))[0]
    window: dict[str, Any] = {"window_minutes": window_minutes}
    figures: dict[str, Any]
    if sent >= SILENT_MIN_SENT and stuck == sent:
        figures = {"numerator": stuck, "denominator": sent, **window}
        reason = f"no status of any kind for the {sent} messages sent in the window"
        verdict = verdict.worse(Verdict("silent", reason, figures))
    elif sent >= DEGRADED_MIN_SENT and stuck >= sent * STUCK_SHARE * eased:
        figures = {"numerator": stuck, "denominator": sent, **window}
        reason = f"{stuck} of {sent} messages sent in the window still at sent"
        verdict = verdict.worse(Verdict("degraded", reason, figures))
    by_class: dict[str, tuple[int, int]] = {}
    for metric, (_, in_window, recent, before) in traffic.items():
        if not metric.startswith("failure:"):
            continue
        key = metric.removeprefix("failure:")
        kind = key.split(":", 1)[0]
        latest, earlier = by_class.get(kind, (0, 0))
        by_class[kind] = (latest + recent, earlier + before)
        code_health = CODES.get(key)
        if code_health and in_window:
            figures = {
                "numerator": in_window,
                "denominator": None,
                "code": key,
                **window,
            }
            reason = f"{in_window} failures {key} in the window"
            found = Verdict(code_health, reason, figures, [key])
            verdict = verdict.worse(found)
    usual_windows = USUAL_OVER / SPIKE_WINDOW
    for kind in CLASSES:
        latest, before = by_class.get(kind, (0, 0))
        usual: float = before / usual_windows
        threshold = max(SPIKE_FLOOR, SPIKE_FACTOR * usual) * eased
        if latest > threshold:
            figures = {
                "numerator": latest,
                "denominator": round(threshold, 2),
                "class": kind,
                "window_minutes": int(SPIKE_WINDOW.total_seconds() // 60),
            }
            reason = f"{latest} {kind} failures in 5 minutes, usually {usual:.1f}"
            keys = [m.removeprefix("failure:") for m in traffic if m.startswith(f"failure:{kind}:")]
            verdict = verdict.worse(Verdict("degraded", reason, figures, keys))
    return verdict


TOUCH_CHECKED = """
UPDATE instance_health h SET checked_at = %(now)s
FROM unnest(%(providers)s::text[], %(instances)s::text[]) AS k(provider, instance_id)
WHERE h.provider = k.provider AND h.instance_id = k.instance_id
"""
LAST_CHECKED = "SELECT max(checked_at) FROM instance_health"
# The judged window is at least this long, however long STUCK_AFTER is.
LEAST_JUDGED = timedelta(minutes=20)


def evaluate(
    conn: psycopg.Connection,
    now: datetime,
    stuck_after: timedelta,
    every: timedelta | None = None,
) -> list[Change]:
    """Judge every instance; keep each one's health and write each change to the feed, in one
    transaction, its reads first. Nothing when another evaluator holds the lock, or (with
    ``every``: the watch's interval) when one judged them less than half of it ago: however
    many workers watch, instances are judged about once an interval."""
    params = {
        # Messages sent over the WINDOW before now, more than STUCK_AFTER ago; with a long
        # STUCK_AFTER, the LEAST_JUDGED minutes before it.
        "window_start": min(now - WINDOW, now - stuck_after - LEAST_JUDGED),
        "stuck_before": now - stuck_after,
        "spike_start": now - SPIKE_WINDOW,
        "usual_start": now - SPIKE_WINDOW - USUAL_OVER,
        "samples": SAMPLES,
    }
    judged = params["stuck_before"] - params["window_start"]  # type: ignore[operator]
    window_minutes = int(judged.total_seconds() // 60)
    changes: list[Change] = []
    with conn.transaction():
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_ID,)).fetchone()
        if not locked or not locked[0]:
            return []
        if every is not None:
            last = conn.execute(LAST_CHECKED).fetchone()
            if last and last[0] is not None and now - last[0] < every / 2:
                return []
        traffic: dict[tuple[str, str], dict[str, tuple[int, int, int, int]]] = {}
        for provider, instance, metric, *counts in conn.execute(TRAFFIC, params):
            traffic.setdefault((provider, instance), {})[metric] = tuple(counts)
        reports = {(r[0], r[1]): (r[2], r[3], r[4]) for r in conn.execute(REPORTS)}
        kept = {(r[0], r[1]): r[2] for r in conn.execute(KEPT)}
        unchanged: list[tuple[str, str]] = []
        first_seen: list[tuple[tuple[str, str], Verdict]] = []
        for key in sorted(set(traffic) | set(reports) | set(kept)):
            previous = kept.get(key)
            verdict = judge(traffic.get(key, {}), reports.get(key), window_minutes, previous)
            if previous == verdict.health:
                unchanged.append(key)
            elif previous is None and verdict.health == "ok":
                first_seen.append((key, verdict))
            else:
                verdict.figures["samples"] = samples(conn, key, verdict, params)
                changes.append(Change(key[0], key[1], previous, verdict))
        # The writes, after every read: the transaction holds its id (and the change feed's
        # readers wait for it) only this long.
        if unchanged:
            conn.execute(
                TOUCH_CHECKED,
                {
                    "now": now,
                    "providers": [k[0] for k in unchanged],
                    "instances": [k[1] for k in unchanged],
                },
            )
        for key, verdict in first_seen:
            write(conn, key, verdict, now)
        for change in changes:
            key = (change.provider, change.instance_id)
            write(conn, key, change.verdict, now)
            conn.execute(
                FEED,
                {
                    "provider": change.provider,
                    "instance_id": change.instance_id,
                    "health": change.verdict.health,
                    "previous": change.previous,
                    "now": now,
                    "reason": change.verdict.reason,
                    "figures": json.dumps(change.verdict.figures),
                },
            )
    return changes


def write(conn: psycopg.Connection, key: tuple[str, str], verdict: Verdict, now: datetime) -> None:
    conn.execute(
        UPSERT,
        {
            "provider": key[0],
            "instance_id": key[1],
            "health": verdict.health,
            "now": now,
            "reason": verdict.reason,
            "figures": json.dumps(verdict.figures),
        },
    )


def samples(
    conn: psycopg.Connection, key: tuple[str, str], verdict: Verdict, params: dict[str, Any]
) -> list[str]:
    """A few message ids behind a verdict: stuck ones, or failed ones of its codes."""
    query = {**params, "provider": key[0], "instance_id": key[1]}
    if verdict.health in ("degraded", "silent") and not verdict.sample_keys:
        rows = conn.execute(SAMPLE_STUCK, query).fetchall()
    elif verdict.sample_keys:
        rows = conn.execute(SAMPLE_FAILED, {**query, "keys": verdict.sample_keys}).fetchall()
    else:
        return []
    return [row[0] for row in rows]
