"""The transition rule table, one case per (current, incoming) pair."""

import pytest

from schemas.statuses import EVENT_STATUSES, STATUSES, is_applied, next_status

# current status -> incoming event -> resulting status. Written out by hand, not derived.
EXPECTED = {
    None: {
        "sent": "sent",
        "received": "received",
        "read": "read",
        "played": "played",
        "failed": "failed",
        "read_by_me": None,
        "pending": None,
    },
    "sent": {
        "sent": "sent",
        "received": "received",
        "read": "read",
        "played": "played",
        "failed": "failed",
        "read_by_me": "sent",
        "pending": "sent",
    },
    "received": {
        "sent": "received",
        "received": "received",
        "read": "read",
        "played": "played",
        "failed": "received",
        "read_by_me": "received",
        "pending": "received",
    },
    "read": {
        "sent": "read",
        "received": "read",
        "read": "read",
        "played": "played",
        "failed": "read",
        "read_by_me": "read",
        "pending": "read",
    },
    "played": dict.fromkeys(EVENT_STATUSES, "played"),
    "failed": dict.fromkeys(EVENT_STATUSES, "failed"),
}
PAIRS = [(current, incoming) for current in (None, *STATUSES) for incoming in EVENT_STATUSES]


def pair_id(pair: tuple) -> str:
    return f"{pair[0] or 'none'}->{pair[1]}"


@pytest.mark.parametrize("pair", PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_transition_table(pair):
    current, incoming = pair
    assert next_status(current, incoming) == EXPECTED[current][incoming]


def test_table_covers_every_pair():
    assert sum(len(row) for row in EXPECTED.values()) == len(PAIRS) == 42


def test_read_by_me_is_applied_but_never_moves_status():
    for current in (None, *STATUSES):
        assert next_status(current, "read_by_me") == current
        assert is_applied(current, "read_by_me")


def test_backwards_event_is_not_applied():
    assert not is_applied("read", "received")
    assert not is_applied("played", "sent")


def test_failed_after_delivery_is_not_applied():
    for current in ("received", "read", "played"):
        assert not is_applied(current, "failed")


def test_nothing_moves_a_failed_message():
    for incoming in ("sent", "received", "read", "played", "failed"):
        assert not is_applied("failed", incoming)


def test_forward_jumps_are_applied():
    assert is_applied(None, "read")
    assert is_applied("sent", "played")
