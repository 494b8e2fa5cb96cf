"""Fuzz the proxy Session fed from both sides (pgwire.testing.harness.SessionHarness).

Input: a mode byte, a phase byte, then deliveries. Modes:

0. no middleware (cut-through: frames delimited and counted only);
1. no middleware, ``check_protocol=True`` (every frame through both state machines);
2. Audit (to an in-memory sink), RoleRewrite and RoleGuard (``drop_only``
   over a static role graph): the selective path.

Phase 0 starts at the client's connection (its startup packet is fuzzed,
and so is the server's answer to the proxy's login); phase 1 starts after a
valid passthrough login (mode 2: with the guard's login query answered).

Each delivery is a header byte, then data. A header with bit 7 set is an
event: (low bits mod 5) the client closes, the server closes (as a
killed server does), the login timer fires, the idle timer fires, the
proxy shuts down. Otherwise bit 0 says who sends (0 client,
1 server) and bits 1-6 the length (0-62; 63: a 2-byte length follows).
The harness plays the adapter: it connects every link the session opens
and runs every job at once.

Allowed: nothing. The session turns every error into actions, so any
exception out of it is a finding, and so is an internal error (an exception
the session caught: ``stats.internal_errors``), bytes sent to a side after
it was closed, CloseClient not last, or a session the proxy does not forget
once closed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import pgwire as pw
from pgwire.audit import AuditRecord
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import Action, OpenUpstream, Proxy, ProxyConfig
from pgwire.roles import RoleGraph
from pgwire.testing.harness import DEFAULT_UPSTREAM, SessionHarness

from ._common import Finding, Input, fuzz

__all__ = ["MODES", "Deliveries", "delivery", "one_input"]

MODES = ("cut_through", "checked", "roles")
EVENTS = ("client_eof", "server_eof", "login_timer", "idle_timer", "shutdown")
GRAPH = RoleGraph.from_rows(
    roles=[("alice", "LOGIN"), ("readers", ""), ("admins", "SUPERUSER")],
    memberships=[("readers", "alice"), ("admins", "alice")],
)


class NullSink:
    """An audit sink that counts records and keeps none."""

    def __init__(self) -> None:
        self.records = 0

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.records += len(records)

    def close(self) -> None:
        pass


_PROXIES: dict[int, Proxy] = {}


def _proxy(mode: int) -> Proxy:
    """One proxy per mode and process: sessions come and go, middleware stays."""
    proxy = _PROXIES.get(mode)
    if proxy is None:
        middleware: list[Any] = []
        if MODES[mode] == "roles":
            middleware = [Audit(NullSink()), RoleRewrite(), RoleGuard("drop_only", graph=GRAPH)]
        proxy = Proxy(ProxyConfig(upstream=DEFAULT_UPSTREAM, middleware=middleware,
                                  check_protocol=MODES[mode] == "checked", idle_timeout=60.0,
                                  idle_in_transaction_timeout=60.0))
        _PROXIES[mode] = proxy
    return proxy


def delivery(side: int, data: bytes) -> bytes:
    """One delivery as the harness reads it (to write seeds): side 0 client, 1 server."""
    if len(data) < 63:
        return bytes([(len(data) << 1) | side]) + data
    out = b""
    while data:
        part, data = data[:0xFFFF], data[0xFFFF:]
        out += bytes([(63 << 1) | side]) + len(part).to_bytes(2, "big") + part
    return out


def event(name: str) -> bytes:
    """One event delivery (to write seeds)."""
    return bytes([0x80 | EVENTS.index(name)])


Deliveries = list[tuple[str, bytes]]


def _deliveries(source: Input) -> Deliveries:
    found: Deliveries = []
    while not source.exhausted:
        header = source.byte()
        if header & 0x80:
            found.append((EVENTS[(header & 0x7F) % len(EVENTS)], b""))
            continue
        length = (header >> 1) & 0x3F
        if length == 63:
            length = (source.byte() << 8) | source.byte()
        data = bytearray()
        while len(data) < length and not source.exhausted:
            data.append(source.byte())
        found.append(("server" if header & 1 else "client", bytes(data)))
    return found


class _Rig:
    """A SessionHarness played as the adapter would: links connect, jobs run."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.errors_before = proxy.stats.internal_errors
        self.wire = SessionHarness(proxy=proxy)
        # The server hung up (the session may still write to it, as to any
        # socket it has not seen close yet: only its own CloseUpstream counts).
        self.server_gone = False
        self.client_gone = False

    def act(self, call: Callable[[], list[Action]]) -> None:
        actions = self.wire.feed(call())
        session = self.wire.session
        for action in actions:
            if isinstance(action, OpenUpstream) and not session.is_closed:
                self.act(functools.partial(session.upstream_connected, action.link))
        if self.wire.jobs:
            self.wire.run_jobs()
        self.check()

    def check(self) -> None:
        if self.proxy.stats.internal_errors != self.errors_before:
            raise Finding(f"internal error in the session: {self.wire.session.close_reason}")

    def login(self, mode: str) -> None:
        self.wire.logged_in()
        if mode != "roles":
            return
        [login_query] = self.wire.server_events()
        if not isinstance(login_query, pw.Query):
            raise Finding(f"the role chain's login query is {login_query!r}")
        fields = tuple(pw.FieldDescription(name=name) for name in ("u", "s", "r"))
        self.act(lambda: self.wire.session.upstream_data(b"".join(m.encode() for m in (
            pw.RowDescription(fields=fields), pw.DataRow(values=(b"alice", b"alice", b"none")),
            pw.CommandComplete(tag="SELECT 1"),
            pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)))))
        if self.wire.session.is_closed:
            raise Finding(f"the login failed: {self.wire.session.close_reason}")

    def deliver(self, kind: str, data: bytes) -> None:
        session = self.wire.session
        if kind == "client":
            if not (self.wire.client_closed or self.client_gone):
                self.act(lambda: session.client_data(data))
        elif kind == "server":
            if session.upstream is not None and not (self.wire.server_closed or
                                                     self.server_gone):
                self.act(lambda: session.upstream_data(data))
        elif kind == "client_eof":
            if not (self.wire.client_closed or self.client_gone):
                self.client_gone = True
                self.act(lambda: session.client_data(b""))
        elif kind == "server_eof":
            if session.upstream is not None and not (self.wire.server_closed or
                                                     self.server_gone):
                self.server_gone = True
                self.act(lambda: session.upstream_data(b""))
        elif kind == "login_timer":
            self.act(lambda: session.timer_fired("login"))
        elif kind == "idle_timer":
            self.act(lambda: session.timer_fired("idle"))
        else:
            self.act(session.shutdown)

    def finish(self) -> None:
        session = self.wire.session
        if session.is_closed:
            calls: list[Callable[[], list[Action]]] = [
                functools.partial(session.client_data, b"x"),
                functools.partial(session.upstream_data, b"x"),
                functools.partial(session.timer_fired, "idle")]
            for call in calls:
                if call():
                    raise Finding("a closed session still returns actions")
        self.wire.close()
        self.check()
        if any(s is session for s in self.proxy.sessions):
            raise Finding("the proxy did not forget a closed session")


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    source = Input(data)
    mode = MODES[source.byte() % len(MODES)]
    phase = source.byte() & 1
    rig = _Rig(_proxy(MODES.index(mode)))
    if phase:
        rig.login(mode)
    else:
        rig.act(rig.wire.session.start)
    for kind, chunk in _deliveries(source):
        if rig.wire.session.is_closed:
            break
        rig.deliver(kind, chunk)
    rig.finish()


if __name__ == "__main__":
    fuzz(one_input)
