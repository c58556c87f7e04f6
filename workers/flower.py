"""Start Flower, refusing to listen beyond loopback without a login.

Flower shows task arguments and can revoke tasks and shut workers down, so it is never
exposed without FLOWER_BASIC_AUTH. Flower reads its options from FLOWER_* variables.
"""

from __future__ import annotations

import os
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def flower_argv(env: dict[str, str]) -> list[str]:
    """Return the command line that starts Flower, or raise SystemExit if it would be open."""
    address = env.get("FLOWER_ADDRESS", "127.0.0.1")
    if address not in LOOPBACK and not env.get("FLOWER_BASIC_AUTH"):
        raise SystemExit(
            f"Flower would listen on {address!r} without a login: set FLOWER_BASIC_AUTH "
            "(user:password), or FLOWER_ADDRESS=127.0.0.1."
        )
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--address={address}",
        f"--port={env.get('FLOWER_PORT', '5555')}",
    ]


def main() -> None:
    """Replace this process with Flower."""
    argv = flower_argv(dict(os.environ))
    os.execv(argv[0], argv)  # noqa: S606


if __name__ == "__main__":
    main()
