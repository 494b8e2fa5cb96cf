"""The proxy engine's data path per statement, in memory: unpooled and pooled sessions.

Each variant is a real :class:`pgwire.proxy.Proxy` driven without sockets, as
an adapter drives it: the client's request bytes go to ``Session.client_data``,
the server's answer bytes to ``Session.upstream_data`` (unpooled) or
``Pool.upstream_data`` on the pool's link (pooled), and every woken target's
``take()`` is collected, as ``tests/pool/test_pool_engine.py`` does. Only the
engine is timed: the requests and answers are encoded before the clock starts,
and the timed loop counts the bytes it is asked to send, which must equal
what forwarding every byte would send (the pool's statement renaming adds its
own bytes upstream, so only the client's side is compared there).

Rows (pgbench ``-S``: ``SELECT abalance ...`` answered RowDescription, DataRow,
CommandComplete, ReadyForQuery; ``prepared``: Bind, Describe, Execute, Sync of
a statement parsed once):

- unpooled, no middleware: the cut-through relay (the baseline);
- unpooled, ``check_protocol = true``: both state machines, no middleware;
- unpooled, a middleware reading the guard's message types and doing nothing;
- pooled, transaction mode and session mode (the pool's own middleware reads
  Query, Parse, Bind, Describe, Close and five server types).

Best of ``--repeat`` runs, the variants taking turns (``_harness.measure``)::

    .venv/bin/python benchmarks/bench_engine.py
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from _harness import Runner, measure, profile

import pgwire as pw
from pgwire.middleware import Middleware
from pgwire.proxy import (
    MAIN_LINK,
    Action,
    OpenUpstream,
    PoolConfig,
    Proxy,
    ProxyAuth,
    ProxyConfig,
    SendToClient,
    SendToUpstream,
    Session,
)
from pgwire.proxy._pool import VERIFY_SQL

UPSTREAM: Final = ("127.0.0.1", 5432)  # never connected to: the script plays the server
USER: Final = "bench"
IDLE: Final = pw.TransactionStatus.IDLE
SELECT: Final = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
PREPARED: Final = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
STARTUP: Final = pw.StartupMessage.from_dict({"user": USER, "database": "postgres"})
LOGIN: Final = (
    pw.AuthenticationOk(),
    *(pw.ParameterStatus(name=n, value=v) for n, v in (
        ("client_encoding", "UTF8"), ("server_version", "15.0"),
        ("session_authorization", USER), ("standard_conforming_strings", "on"))),
    pw.BackendKeyData(process_id=4242, secret_key=b"\x01\x02\x03\x04"),
    pw.ReadyForQuery(status=IDLE),
)
TEXT: Final = pw.FieldDescription(name="current_user", data_type_oid=19, data_type_size=64)
VERIFIED: Final = (
    pw.RowDescription(fields=(TEXT, TEXT)), pw.DataRow(values=(USER.encode(), USER.encode())),
    pw.CommandComplete(tag="SELECT 1"), pw.ReadyForQuery(status=IDLE),
)
ROW: Final = pw.FieldDescription(name="abalance", table_oid=16397, column_attribute_number=3,
                                 data_type_oid=23, data_type_size=4)
SIMPLE_ANSWER: Final = (pw.RowDescription(fields=(ROW,)), pw.DataRow(values=(b"0",)),
                        pw.CommandComplete(tag="SELECT 1"), pw.ReadyForQuery(status=IDLE))
PREPARE: Final = (pw.Parse(statement="P0_1", query=PREPARED), pw.Sync())
PREPARE_ANSWER: Final = (pw.ParseComplete(), pw.ReadyForQuery(status=IDLE))
EXTENDED_ANSWER: Final = (pw.BindComplete(), *SIMPLE_ANSWER)
#: The guard's message types (pgwire.middleware.roles.RoleGuard), read and left alone.
GUARD_CLIENT: Final = frozenset({b"Q", b"P", b"B", b"E", b"C", b"S", b"F"})
GUARD_SERVER: Final = frozenset({b"C", b"E", b"Z", b"I", b"s"})

_AIDS = itertools.count(1_000_000)


class ReadsLikeTheGuard(Middleware[None]):
    client_messages = GUARD_CLIENT
    server_messages = GUARD_SERVER


def encode(*messages: pw.Message) -> bytes:
    return b"".join(m.encode() for m in messages)


def requests(count: int, extended: bool) -> list[bytes]:
    """One request per statement, each with an account id never used before."""
    if extended:
        return [encode(pw.Bind(statement="P0_1", parameters=(str(aid).encode(),)),
                       pw.Describe(kind="P"), pw.Execute(), pw.Sync())
                for aid in itertools.islice(_AIDS, count)]
    return [pw.Query(query=SELECT.format(aid=aid)).encode()
            for aid in itertools.islice(_AIDS, count)]


class Engine:
    """A proxy, one logged-in client session, and the server end of its link(s)."""

    def __init__(self, config: ProxyConfig) -> None:
        self.proxy = Proxy(config)
        self.servers: dict[int, pw.Backend] = {}
        self.connected: set[int] = set()
        self.client = pw.Frontend()
        self.session: Session = self.proxy.new_session(("127.0.0.1", 50000))
        if self.proxy.pool is not None:
            self.route(self.proxy.pool, self.proxy.pool.start())
        self.route(self.session, self.session.start())
        self.route(self.session, self.session.client_data(self.client.send(STARTUP)))
        self.serve()
        if self.session.state != "ready":
            raise SystemExit(f"the login did not finish: {self.session.state}")

    def route(self, target: Any, actions: list[Action]) -> None:
        queue = [actions]
        while queue:
            for action in queue.pop(0):
                if isinstance(action, OpenUpstream):
                    self.servers[action.link] = pw.Backend()
                elif isinstance(action, SendToUpstream):
                    self.servers[action.link].receive_data(action.data)
                elif isinstance(action, SendToClient):
                    self.client.receive_data(action.data)
            queue += [woken.take() for woken in self.proxy.take_woken()]

    def upstream_data(self, link: int, data: bytes) -> list[Action]:
        pool = self.proxy.pool
        if pool is not None:
            return pool.upstream_data(data, link)
        return self.session.upstream_data(data, link)

    def serve(self, answers: dict[str, tuple[pw.Message, ...]] | None = None) -> None:
        """Play the server until nothing moves: logins, the pool's checks, ``answers``."""
        progress = True
        while progress:
            progress = False
            for link in list(self.servers):
                if link not in self.connected:
                    self.connected.add(link)
                    owner: Any = self.proxy.pool if link != MAIN_LINK else self.session
                    self.route(owner, owner.upstream_connected(link))
                    progress = True
                backend = self.servers[link]
                while (event := backend.next_event()) is not pw.NEED_DATA:
                    progress = True
                    if isinstance(event, pw.StartupMessage):
                        reply: tuple[pw.Message, ...] = LOGIN
                    elif isinstance(event, pw.Query) and event.query == VERIFY_SQL:
                        reply = VERIFIED
                    elif isinstance(event, pw.Query | pw.Sync):
                        reply = (answers or {}).get(type(event).__name__, (
                            pw.CommandComplete(tag="SET"), pw.ReadyForQuery(status=IDLE)))
                    else:
                        continue
                    self.route(self, self.upstream_data(
                        link, b"".join(backend.send(message) for message in reply)))
        while self.client.next_event() is not pw.NEED_DATA:
            pass

    def link(self) -> int:
        pool = self.proxy.pool
        if pool is None:
            return MAIN_LINK
        [link] = pool._by_link
        return link

    def take(self) -> list[Action]:
        return [action for woken in self.proxy.take_woken() for action in woken.take()]


def runner(config: ProxyConfig, count: int, extended: bool) -> Runner[tuple[object, object]]:
    engine = Engine(config)
    if extended:
        engine.route(engine.session, engine.session.client_data(
            b"".join(engine.client.send(message) for message in PREPARE)))
        engine.serve({"Sync": PREPARE_ANSWER})
    answer = encode(*(EXTENDED_ANSWER if extended else SIMPLE_ANSWER))
    link = engine.link()
    session = engine.session
    pooled = engine.proxy.pool is not None

    def run(_: list[bytes]) -> tuple[tuple[object, object], float]:
        frames = requests(count, extended)
        client_data = session.client_data
        upstream_data = engine.upstream_data
        take = engine.take
        upstream = to_client = 0
        start = time.perf_counter()
        for frame in frames:
            for action in client_data(frame) + take():
                if type(action) is SendToUpstream:
                    upstream += len(action.data)
            for action in upstream_data(link, answer) + take():
                if type(action) is SendToClient:
                    to_client += len(action.data)
        seconds = time.perf_counter() - start
        sent = sum(map(len, frames))
        done = (upstream >= sent if pooled else upstream, to_client)
        return (done, (True if pooled else sent, len(answer) * count)), seconds

    return run


def check(name: str, outcome: tuple[object, object]) -> None:
    done, expected = outcome
    if done != expected:
        raise SystemExit(f"{name}: the run did {done!r}, expected {expected!r}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", metavar="ROW", help="profile one row after timing")
    args = parser.parse_args(argv)
    count = args.statements

    def unpooled(**settings: Any) -> Callable[[bool], ProxyConfig]:
        return lambda extended: ProxyConfig(upstream=UPSTREAM, **settings)

    def pooled(mode: str) -> Callable[[bool], ProxyConfig]:
        return lambda extended: ProxyConfig(upstream=UPSTREAM, auth=ProxyAuth(method="trust"),
                                            pool=PoolConfig(mode=mode, max_size=1))

    rows: dict[str, Callable[[bool], ProxyConfig]] = {
        "unpooled, no middleware (baseline)": unpooled(),
        "unpooled, check_protocol = true": unpooled(check_protocol=True),
        "unpooled, no-op reading the guard's types": unpooled(middleware=[ReadsLikeTheGuard]),
        "pooled, transaction mode": pooled("transaction"),
        "pooled, session mode": pooled("session"),
    }
    for extended in (False, True):
        runners = {label: runner(make(extended), count, extended) for label, make in rows.items()}
        best = measure(runners, [], args.repeat, False, check)
        baseline = best["unpooled, no middleware (baseline)"]
        print(f"\n{'prepared (Bind, Describe, Execute, Sync)' if extended else 'simple (Query)'}"
              f", {count:,} statements per run, best of {args.repeat}:")
        for label, seconds in best.items():
            print(f"  {label:<44} {seconds / count * 1e6:8.2f} µs/stmt "
                  f"{seconds / baseline:6.2f}x")
        if args.profile in runners:
            profile(runners[args.profile], [])


if __name__ == "__main__":
    main()
