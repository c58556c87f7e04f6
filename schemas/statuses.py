"""The transition rule: where a message's status may go. Pure, no I/O.

The SQL function ``ticks_next_status`` (migrations/) mirrors ``next_status``; a test
proves they agree on every pair.
"""

from collections.abc import Collection

SENT = "sent"
RECEIVED = "received"
READ = "read"
PLAYED = "played"
FAILED = "failed"
READ_BY_ME = "read_by_me"
# The provider has the message but has not sent it yet (Evolution PENDING, WAHA 0, Twilio
# queued/sending/accepted/scheduled): kept in the history, never a status.
PENDING = "pending"

# Delivery progress, in order. A message only ever moves right.
PROGRESS = (SENT, RECEIVED, READ, PLAYED)
# What a message row's status column may hold.
STATUSES = (*PROGRESS, FAILED)
# What an event may carry: read_by_me is a receipt of the connected account, not a state;
# pending is not a state either.
EVENT_STATUSES = (*STATUSES, READ_BY_ME, PENDING)
# failed is believable only while delivery is unproven.
FAILABLE_FROM = (None, SENT)


def rank(status: str) -> int:
    """Return the position of a progress status (sent=0 ... played=3)."""
    return PROGRESS.index(status)


def next_status(current: str | None, incoming: str) -> str | None:
    """Return the status a message at ``current`` holds after an ``incoming`` event.

    - None: the message has no status yet (never seen, or only read_by_me seen).
    - sent, received, read, played: progress; any forward jump is allowed, backwards
      events (a late received after read) are kept in history but move nothing.
    - failed: terminal; entered only from None or sent, because after received the
      recipient's phone has proven delivery and a failure report contradicts it.
    - read_by_me: the connected account read the message itself; never a status.
    - pending: not sent yet; never a status (nor a step back from one).
    """
    if incoming in (READ_BY_ME, PENDING):
        return current
    if current == FAILED:
        return current
    if incoming == FAILED:
        return FAILED if current in FAILABLE_FROM else current
    if current is None or rank(incoming) > rank(current):
        return incoming
    return current


def furthest(statuses: Collection[str]) -> str | None:
    """Where one recipient got, whatever order their receipts came in: the furthest progress
    status, or failed when nothing past sent was reported (a group member's receipts)."""
    reached = [status for status in statuses if status in PROGRESS]
    best = max(reached, key=rank) if reached else None
    if FAILED in statuses and best in (None, SENT):
        return FAILED
    return best


def is_applied(current: str | None, incoming: str) -> bool:
    """Return whether an event takes effect (moves the status, or records read_by_me)."""
    return incoming == READ_BY_ME or next_status(current, incoming) != current


# A sending number's (instance's) health, from good to bad (workers/core/numbers.py).
HEALTHS = ("ok", "degraded", "silent", "disconnected", "restricted", "banned")
