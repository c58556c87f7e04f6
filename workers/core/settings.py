"""Settings read from the environment the same way by the web and the workers (a bad value
stops the start with a message naming it), and the names and timings of the queues they
share, read here once."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping


def seconds(
    env: Mapping[str, str], name: str, default: str, most: float = 86400, unit: str = "seconds"
) -> float:
    """Return a setting that is a number (of seconds, from 0 to ``most``, a day unless said),
    or fail naming it."""
    raw = env.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= most:  # NaN fails too
        raise RuntimeError(f"{name} must be a number of {unit} from 0 to {most:g}, not {raw!r}")
    return value


def whole(
    env: Mapping[str, str], name: str, default: int, least: int, most: int, unit: str = ""
) -> int:
    """A setting that is a whole number (of ``unit``) from ``least`` to ``most``, or fail
    naming it."""
    raw = env.get(name, str(default)).strip()
    if not raw.isdigit() or not least <= int(raw) <= most:
        of = f" of {unit}" if unit else ""
        raise RuntimeError(f"{name} must be a whole number{of} from {least} to {most}, not {raw!r}")
    return int(raw)


# The queues, shared by the web (publisher), the workers and the broker seam.
QUEUE = "ticks"
DELIVERY_QUEUE = "ticks.deliveries"  # outbound webhooks' tasks (workers/outbound/deliveries.py)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Redis redelivers a message not acknowledged within this many seconds: how long the
# messages of a worker killed outright wait before redelivery. A task waiting out a database
# outage holds its message unacknowledged, sleeping up to RETRY_BACKOFF_MAX between attempts,
# and hands it back after half this timeout; a longer backoff would overshoot that.
VISIBILITY_TIMEOUT = int(os.environ.get("TICKS_VISIBILITY_TIMEOUT", "3600"))
RETRY_BACKOFF_MAX = int(os.environ.get("TICKS_RETRY_BACKOFF_MAX", "300"))
# The in-flight ledger's sweeper (workers/brokers/ledger.py): how often, and how old an
# unfinished message must be before it counts as lost if no worker holds it.
SWEEP_INTERVAL = float(os.environ.get("TICKS_SWEEP_INTERVAL", "60"))
SWEEP_MIN_AGE = float(os.environ.get("TICKS_SWEEP_MIN_AGE", "120"))
if RETRY_BACKOFF_MAX * 2 > VISIBILITY_TIMEOUT:
    raise RuntimeError(
        f"TICKS_RETRY_BACKOFF_MAX ({RETRY_BACKOFF_MAX}) must be at most half of "
        f"TICKS_VISIBILITY_TIMEOUT ({VISIBILITY_TIMEOUT}), or Redis redelivers messages "
        "that a worker still holds through a database outage."
    )

# A message still at sent this long after it was sent is stuck (GET /insights, number health).
STUCK_AFTER = seconds(os.environ, "STUCK_AFTER", "600", 7 * 86400)
# How often a status worker judges every instance's health (workers/lifecycle/watch.py).
HEALTH_INTERVAL = seconds(os.environ, "HEALTH_INTERVAL", "30", 3600)
