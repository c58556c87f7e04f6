"""Settings that are numbers, read from the environment the same way by the web and the
workers: a bad value stops the start with a message naming it."""

from __future__ import annotations

import math
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
