"""Delivery insights: each instance's funnel over a cohort of messages (GET /insights).

A message belongs to the minute it was sent (its provider's time; a message whose sent was
never seen, to the first time Ticks knows of it). It counts once as sent, and as delivered
(received, read or played: a read without a delivered was delivered), read (read or
played), played, failed, or at_sent (neither delivered nor failed: stuck once sent more than
STUCK_AFTER ago). Its time to deliver (first of received, read, played less sent) and to
read (first of read, played less sent) go in geometric bins, each a quarter wider than the
one before, so a percentile read from them is within a quarter of the exact one.

store.apply_events reads what the messages of a batch count for before applying it, under the
lock it holds on them, and adds what they count for after, less that, to insight_counts in the
same transaction (rows in sorted order: two batches never deadlock on them); both computed by
the database (migration 013's functions), two statements a batch. A message moved to another
minute (a late sent) leaves the first and joins the second.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import psycopg

FIRST_BIN = 0.5  # seconds: bin 0 is [0, 0.5), bin k [0.5 * 1.25 ** (k - 1), 0.5 * 1.25 ** k)
GROWTH = 1.25
LAST_BIN = 90  # 0.5 * 1.25 ** 90 s: beyond five years

# What the batch's messages count for, as they stand in this transaction (migration 013's
# ticks_insight_metrics and ticks_cohort_minute); a row just locked for its first status (or
# with only read_by_me) counts for nothing yet.
COUNTED = """
SELECT m.provider, coalesce(m.instance_id, '') AS instance_id, ticks_cohort_minute(m) AS minute,
       metric
FROM unnest(%(providers)s::text[], %(ids)s::text[]) AS k(provider, message_id)
JOIN messages m ON m.provider = k.provider AND m.message_id = k.message_id
CROSS JOIN unnest(ticks_insight_metrics(m)) AS metric
WHERE m.status IS NOT NULL
  AND m.created_at >= (SELECT since FROM insights_start)
"""
BEFORE = f"""
SELECT provider, instance_id, minute, metric, count(*) FROM ({COUNTED}) AS c GROUP BY 1, 2, 3, 4
"""
# What they count for now, less what they counted for before, added in key order (two
# batches lock the rows they share in the same order: no deadlock).
ADD = f"""
INSERT INTO insight_counts AS c (provider, instance_id, minute, metric, count)
SELECT provider, instance_id, minute, metric, sum(n) FROM (
    SELECT *, 1 AS n FROM ({COUNTED}) AS now
    UNION ALL
    SELECT * FROM unnest(%(b_providers)s::text[], %(b_instances)s::text[],
                         %(b_minutes)s::timestamptz[], %(b_metrics)s::text[],
                         %(b_counts)s::bigint[])
) AS delta (provider, instance_id, minute, metric, n)
GROUP BY 1, 2, 3, 4
HAVING sum(n) <> 0
ORDER BY 1, 2, 3, 4
ON CONFLICT (provider, instance_id, minute, metric) DO UPDATE SET count = c.count + EXCLUDED.count
"""


def time_bin(seconds: float) -> int:
    """The bin of a duration, as ticks_time_bin gives it (a negative one is bin 0)."""
    if seconds < FIRST_BIN:
        return 0
    return min(LAST_BIN, int(math.log(seconds / FIRST_BIN) / math.log(GROWTH)) + 1)


def bin_bounds(index: int) -> tuple[float, float]:
    if index == 0:
        return 0.0, FIRST_BIN
    return FIRST_BIN * GROWTH ** (index - 1), FIRST_BIN * GROWTH**index


def keys_params(keys: list[tuple[str, str]]) -> dict[str, Any]:
    return {"providers": [k[0] for k in keys], "ids": [k[1] for k in keys]}


def counted_before(cur: psycopg.Cursor[Any], keys: list[tuple[str, str]]) -> list[Any]:
    """What the messages count for before the batch is applied (their rows locked)."""
    return cur.execute(BEFORE, keys_params(keys)).fetchall()


def add_changes(cur: psycopg.Cursor[Any], keys: list[tuple[str, str]], before: list[Any]) -> None:
    """Add what the messages count for now, less ``before``, to insight_counts."""
    params = keys_params(keys)
    params.update(
        b_providers=[row[0] for row in before],
        b_instances=[row[1] for row in before],
        b_minutes=[row[2] for row in before],
        b_metrics=[row[3] for row in before],
        b_counts=[-row[4] for row in before],
    )
    cur.execute(ADD, params)


# Figures over a window: a row per (provider, instance, bucket, metric), with the part of
# at_sent sent before the stuck cut-off.
FIGURES = """
SELECT provider, instance_id, {bucket} AS bucket, metric, sum(count)::bigint,
       (sum(count) FILTER (WHERE minute < %(stuck_before)s))::bigint
FROM insight_counts
WHERE minute >= %(since)s AND minute < %(until)s
  AND (%(provider)s::text IS NULL OR provider = %(provider)s)
  AND (%(instance_id)s::text IS NULL OR instance_id = %(instance_id)s)
GROUP BY 1, 2, 3, 4
HAVING sum(count) <> 0
ORDER BY 1, 2, 3, 4
"""
BUCKETS = {
    None: "%(since)s::timestamptz",
    "hour": "date_trunc('hour', minute, 'UTC')",
    "day": "date_trunc('day', minute, 'UTC')",
}
STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
PROVISIONAL_FOR = timedelta(hours=24)


def fetch(
    conn: psycopg.Connection,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    stuck_after: timedelta,
    provider: str | None = None,
    instance_id: str | None = None,
    bucket: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per instance (and bucket) over [since, until), minutes."""
    params = {
        "since": since,
        "until": until,
        "stuck_before": now - stuck_after,
        "provider": provider,
        "instance_id": None if instance_id is None else instance_id,
    }
    rows = conn.execute(FIGURES.format(bucket=BUCKETS[bucket]), params).fetchall()
    grouped: dict[tuple[str, str, datetime], dict[str, tuple[int, int]]] = {}
    for prov, instance, start, metric, count, stuck in rows:
        grouped.setdefault((prov, instance, start), {})[metric] = (int(count), int(stuck or 0))
    entries = []
    for (prov, instance, start), metrics in grouped.items():
        begin = max(start, since)
        end = min(start + STEPS[bucket], until) if bucket else until
        entries.append(entry(prov, instance, begin, end, metrics, now))
    return entries


def entry(
    provider: str,
    instance: str,
    since: datetime,
    until: datetime,
    metrics: dict[str, tuple[int, int]],
    now: datetime,
) -> dict[str, Any]:
    def total(name: str) -> int:
        return metrics.get(name, (0, 0))[0]

    sent = total("sent")
    stuck = metrics.get("at_sent", (0, 0))[1]
    counts = {
        "delivered": total("delivered"),
        "read": total("read"),
        "played": total("played"),
        "failed": total("failed"),
    }
    failures: list[dict[str, Any]] = []
    for metric, (count, _) in metrics.items():
        if metric.startswith("failure:"):
            _, kind, reason = metric.split(":", 2)
            failures.append({"class": kind, "reason": reason, "count": count})
    failures.sort(key=lambda f: (-f["count"], f["class"], f["reason"]))

    def ratio(part: int) -> float | None:
        return round(part / sent, 4) if sent else None

    return {
        "provider": provider,
        "instance_id": instance or None,
        "since": since,
        "until": until,
        "sent": sent,
        **counts,
        "stuck": stuck,
        "ratios": {
            "delivered": ratio(counts["delivered"]),
            "read": ratio(counts["read"]),
            "failed": ratio(counts["failed"]),
            "stuck": ratio(stuck),
        },
        "time_to_deliver": percentiles(bins(metrics, "deliver:")),
        "time_to_read": percentiles(bins(metrics, "read:")),
        "failures": failures,
        "provisional": until + PROVISIONAL_FOR > now,
    }


def bins(metrics: dict[str, tuple[int, int]], prefix: str) -> dict[int, int]:
    return {
        int(metric[len(prefix) :]): count
        for metric, (count, _) in metrics.items()
        if metric.startswith(prefix) and count > 0
    }


def percentiles(counts: dict[int, int]) -> dict[str, float | None]:
    """p50, p90 and p99 (nearest rank) read from the bins, linear within the rank's bin."""
    total = sum(counts.values())
    if not total:
        return {name: None for name, _ in QUANTILES}
    result: dict[str, float | None] = {}
    for name, q in QUANTILES:
        rank = max(1, math.ceil(q * total))
        below = 0
        for index in sorted(counts):
            if below + counts[index] >= rank:
                low, high = bin_bounds(index)
                result[name] = round(low + (high - low) * (rank - below) / counts[index], 3)
                break
            below += counts[index]
    return result
