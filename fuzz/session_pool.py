"""Fuzz a pooled proxy Session fed from both sides (the pool engine's test rig).

The rig is ``Net`` from ``tests/pool/test_pool_engine.py``: a Proxy with a
Pool, clients logging in with ``trust``, and a Backend playing the server
of each pool link; it checks every action as an adapter would (no bytes to
a closed client or link, CloseClient last, no link closed twice). Run it
from the repository root (``python -m fuzz.session_pool``) so ``tests`` is
importable.

Input: a control byte (bit 0: ``check_protocol``; bit 1: session mode
instead of transaction mode; bit 2: a second client logs in too and waits),
then deliveries in the format of :mod:`fuzz.session` (client bytes go to
the first client's session; server bytes to the newest live pool link; the
events: the client closes, the link's server closes, the client's login
timer, its idle timer, and "connect and log in every link the pool opened").
The client has logged in first (the pool's own login and checks answered).

Allowed: nothing; any exception, any failed check of the rig, and any
internal error the proxy counted is a finding.
"""

from __future__ import annotations

from typing import Any

from tests.pool.test_pool_engine import Net

from ._common import Finding, Input, fuzz
from .session import _deliveries

__all__ = ["one_input"]


def _live_link(net: Net) -> int | None:
    live = [link for link, server in net.servers.items()
            if server.connected and not server.closed and not server.hung_up]
    return max(live) if live else None


def _check(net: Net) -> None:
    if net.proxy.stats.internal_errors:
        reasons = [c.session.close_reason for c in net.clients]
        raise Finding(f"internal error in a pooled session: {reasons}")
    net.check_books()


def _connect_opened(net: Net) -> None:
    for link in net.opened():
        net.link_up(link)
        net.accept_login(link)


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    source = Input(data)
    control = source.byte()
    settings: dict[str, Any] = {"mode": "session" if control & 2 else "transaction",
                                "max_size": 1}
    net = Net(client_decode=set(), check_protocol=bool(control & 1), lenient=True, **settings)
    client = net.login()
    if control & 4:
        net.client()
    _check(net)
    for kind, chunk in _deliveries(source):
        session = client.session
        if session.is_closed:
            break
        link = _live_link(net)
        if kind == "client":
            client.send_bytes(chunk)
        elif kind == "server":
            if link is not None:
                net.server_bytes(link, chunk)
        elif kind == "client_eof":
            client.hang_up()
        elif kind == "server_eof":
            if link is not None:
                net.server_hangs_up(link)
        elif kind in ("login_timer", "idle_timer"):
            name = kind.removesuffix("_timer")
            if name in client.timers:
                client.fire(name)
        else:
            _connect_opened(net)
        _check(net)
    for each in net.clients:
        if not each.session.is_closed:
            each.hang_up()
    _check(net)


if __name__ == "__main__":
    fuzz(one_input)
