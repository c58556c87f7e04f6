"""The drain benchmark's backlog: its callbacks, and how they are queued through the endpoint
(shared by the Redis and RabbitMQ parts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.common import (
    BACKLOG,
    TOKEN,
    WEB_APP,
    free_port,
    http_ok,
    process,
    wait_until,
    web_argv,
)

STATUSES = ["SENT", "RECEIVED", "READ", "PLAYED"]
# The same backlog for every pipeline: BACKLOG callbacks about BACKLOG / 4 messages, each
# message sent, received, read and played once, its four callbacks in a mixed order.
BACKLOG_LUA = """
local total, messages, n, accepted, refused = %(total)d, %(messages)d, -2, 0, 0
local statuses = {"SENT", "RECEIVED", "READ", "PLAYED"}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  -- wrk makes (and drops) one request before connecting: that one, and any after the
  -- backlog, is a harmless GET.
  if n < 0 or n >= total then return wrk.format("GET", "/healthz") end
  local i = n %% messages
  local status = statuses[((math.floor(n / messages) + i) %% 4) + 1]
  return wrk.format("POST", "%(path)s", nil, string.format(
    '{"status":"%%s","ids":["B%%d"],"momment":%%d,"phone":"5511987654321",'
    .. '"type":"MessageStatusCallback","instanceId":"bench"}', status, i, 1732280000000 + n))
end
response = function(status, headers, body)
  if string.find(body, '"accepted"', 1, true) then accepted = accepted + 1
  elseif status ~= 200 then refused = refused + 1 end
  if accepted + refused == total then io.stderr:write("done " .. refused .. "\\n") end
end
"""


def backlog() -> list[tuple[str, str, int]]:
    """(message id, status, offset) of each callback, in the order BACKLOG_LUA sends them."""
    messages = BACKLOG // 4
    return [
        (f"B{n % messages}", STATUSES[(n // messages + n % messages) % 4], n)
        for n in range(BACKLOG)
    ]


def queue_through_endpoint(env: dict[str, str], tmp: Path) -> None:
    """Post the backlog to Ticks' endpoint (production config, wrk, 16 connections)."""
    port = free_port()
    argv = web_argv(WEB_APP)
    run_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
    script = tmp / "backlog.lua"
    script.write_text(
        BACKLOG_LUA
        % {"total": BACKLOG, "messages": BACKLOG // 4, "path": f"/webhooks/zapi/{TOKEN}"}
    )
    with process(argv, run_env, tmp / "web-backlog.log"):
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "web")
        # wrk runs for its whole -d even once its thread stops: the script says when it is done.
        load = subprocess.Popen(
            ["wrk", "-t1", "-c16", "-d3600s", "-s", str(script), f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert load.stderr is not None
            line = load.stderr.readline()
        finally:
            load.terminate()
            load.wait()
    if not line.startswith("done 0"):
        raise SystemExit(f"bench: the endpoint did not accept the whole backlog: {line!r}")
