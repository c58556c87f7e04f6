"""Flower is never exposed beyond loopback without a login."""

import pytest

from workers.flower import flower_argv


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::"])
def test_flower_beyond_loopback_without_login_refuses_to_start(address):
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        flower_argv({"FLOWER_ADDRESS": address})


def test_flower_beyond_loopback_with_login_starts():
    argv = flower_argv({"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "ops:s3cret"})
    assert "--address=0.0.0.0" in argv


def test_flower_defaults_to_loopback():
    argv = flower_argv({})
    assert "--address=127.0.0.1" in argv and "--port=5555" in argv
