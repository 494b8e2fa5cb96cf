"""The whole server dies (SIGKILL to the postmaster and its children), as in a
host crash, in each phase of tests/faults/phases.py.

The client must get FATAL 08006 from the proxy, or the server's own FATAL
57P01 ("terminating connection due to unexpected postmaster exit", which a
backend sends when it notices first), then the end of the stream; the proxy
keeps nothing and the audit holds the statement and the session's end. The
cluster is started again afterwards, under the same running proxy.
"""

from __future__ import annotations

import pytest

from pgwire.testing.cluster import PostgresCluster

from .phases import PHASES, kill_during, table
from .toolkit import ProxyProcess, Quiet

pytestmark = pytest.mark.fault
__all__ = ["table"]  # a fixture


@pytest.mark.parametrize("phase", list(PHASES))
def test_postmaster_killed(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
                           table: str, phase: str) -> None:
    kill_during(proxy, baseline, cluster, phase, "postmaster")
