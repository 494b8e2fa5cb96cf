"""psycopg's ``conn.cancel()`` of a running pg_sleep, run as a child process.

Usage: ``python proxy_cancel_client.py <conninfo through the proxy> <conninfo direct>``.
Prints one JSON object: the SQLSTATE and message the sleeping query ended
with, and whether the connection answered a query afterwards.

Why a process of its own: psycopg's C implementation calls libpq's blocking
PQcancel() while holding the GIL, and PQcancel() waits for the peer to close
the cancel connection. With the proxy in a thread of the same interpreter,
that peer can never run; in a child process the proxy is free to answer.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import psycopg


def main(through_proxy: str, direct: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with psycopg.connect(through_proxy, autocommit=True) as conn, psycopg.connect(
        direct, autocommit=True
    ) as watcher:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        pid = row[0]
        problems: list[str] = []

        def cancel_when_sleeping() -> None:
            deadline = time.monotonic() + 10
            while True:
                state = watcher.execute(
                    "select state, query from pg_stat_activity where pid = %s", (pid,)
                ).fetchone()
                if state is not None and state[0] == "active" and "pg_sleep" in state[1]:
                    break
                if time.monotonic() > deadline:
                    problems.append(f"backend {pid} never ran pg_sleep: {state}")
                    return
                time.sleep(0.02)
            conn.cancel()

        thread = threading.Thread(target=cancel_when_sleeping, daemon=True)
        thread.start()
        try:
            conn.execute("select pg_sleep(30)")
            result["error"] = None
        except psycopg.Error as exc:
            result["error"] = {"type": type(exc).__name__, "sqlstate": exc.sqlstate,
                               "message": exc.diag.message_primary}
        thread.join(10)
        result["problems"] = problems
        after = conn.execute("select 'still usable'").fetchone()
        result["after"] = None if after is None else after[0]
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
