"""The server process of a session dies (SIGKILL to the pg_backend_pid()).

In each phase (a query running, a COPY FROM STDIN half sent, a COPY TO STDOUT
half read, a transaction open and idle) the client must get FATAL 08006 (the
proxy's "the upstream server closed the connection unexpectedly") and then the
end of the stream; the proxy must come back to its idle fd and thread counts;
the audit file must verify and hold the statement that was running, with an
outcome, and the session's end. (PostgreSQL then resets every other session
and recovers; the test waits for that before going on.)
"""

from __future__ import annotations

import pytest

from pgwire.testing.cluster import PostgresCluster

from .phases import PHASES, kill_during, table
from .toolkit import ProxyProcess, Quiet

pytestmark = pytest.mark.fault
__all__ = ["table"]  # a fixture


@pytest.mark.parametrize("phase", list(PHASES))
def test_backend_killed(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
                        table: str, phase: str) -> None:
    kill_during(proxy, baseline, cluster, phase, "backend")
