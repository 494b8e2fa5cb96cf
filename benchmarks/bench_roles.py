"""Role middleware cost: per statement and per login in memory, and pgbench -S through the proxy.

Two parts, one run (the issue's "cost of each middleware per statement, first
time and cached, and pgbench -S TPS with all three on vs no middleware"):

**Micro** (no sockets; best of ``--repeat`` runs, the variants taking turns,
with ``_harness.measure``):

(a) ``pgwire.roles._sql.analyze``, the guard's SQL analysis, per statement:
    first time (pgbench-like SELECTs, each with a literal never seen before,
    so the cache misses) and cached (the same text again, in a fresh string
    object each time, as a decoded message would be).
(b) one statement through a real :class:`pgwire.proxy.Session` driven in
    memory: the client's request bytes in, the server's answer bytes in, the
    actions out. Simple protocol (Query -> RowDescription, DataRow,
    CommandComplete, ReadyForQuery, what pgbench -S gets) and extended
    (Bind, Describe, Execute, Sync of a statement parsed once, as pgbench
    -M prepared sends). The named baseline is the same session with no
    middleware; every other row is given as time per statement and as a
    multiple of it: RoleRewrite, RoleGuard (policy deny) first time and
    cached, Audit, all three; and, to tell the engine's share from the
    middleware's, the session with ``check_protocol = true`` (both state
    machines, no middleware) and with a middleware that asks for the guard's
    message types and does nothing with them.
(c) one login through a Session (StartupMessage to ReadyForQuery, then
    Terminate): no middleware, RoleRewrite (map mode, three rules),
    RoleGuard (which then asks the server who the session is: one more
    round trip, answered in memory), Audit, and all three.
(d) Audit per statement: rows of (b), the middleware with a JsonLinesSink
    writing to a temporary file; its queue is flushed before the clock stops,
    so the sink thread's work counts. A row with a sink that writes nothing
    separates the records' making from their writing. (Without a guard,
    Audit tracks the session's role itself, so it analyses SQL too.)

Before timing, each session variant is played once through a real Frontend
(the client) and Backend (the server), which check every byte the session
produces; the timed runs then check the byte counts.

**Macro**: like ``bench_proxy.py`` (whose targets, pgbench driver and report
pieces this script imports): a throwaway PostgreSQL filled by ``pgbench -i``,
then ``pgbench -S`` in ``-M simple`` and ``-M prepared`` against: direct;
``python -m pgwire proxy`` with no middleware; and the same proxy with a
``--config`` TOML file chaining Audit (JSON Lines sink), RoleRewrite (map
mode) and RoleGuard (policy deny). TPS and ratios against "pgwire, no
middleware" and against direct.

A row whose middleware is missing or cannot be built prints ``skipped:
<reason>``. ``--micro-only`` skips pgbench; ``--profile`` runs the guard's
session variants once under cProfile. Run with no arguments::

    .venv/bin/python benchmarks/bench_roles.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import itertools
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bench_proxy
from _harness import Options, Runner, measure, print_environment, profile
from bench_proxy import (
    MIDDLEWARE,
    REWRITE_RULES,
    Bench,
    Result,
    TargetSkipped,
    middleware_config,
)

import pgwire as pw
from pgwire.middleware import Middleware
from pgwire.proxy import (
    MAIN_LINK,
    Proxy,
    ProxyConfig,
    SendToClient,
    SendToUpstream,
    Session,
    SessionState,
)
from pgwire.testing.cluster import ClusterUnavailable, PostgresCluster, find_postgres_bindir

UPSTREAM: Final = ("127.0.0.1", 5432)  # never connected to: the script plays the server
CLIENT_ADDRESS: Final = ("127.0.0.1", 50000)
USER: Final = "bench"
DATABASE: Final = "postgres"
IDLE: Final = pw.TransactionStatus.IDLE

#: pgbench -S's statement, as ``-M simple`` sends it (a literal per transaction)
#: and as ``-M prepared`` parses it once.
SELECT_TEXT: Final = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
SELECT_PREPARED: Final = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
PREPARED_NAME: Final = "P0_1"
CACHED_AID: Final = 4242

#: RoleRewrite's rules, here and in the proxy's TOML: the last one maps every
#: user to itself (the server authenticates the rewritten role, and pgbench
#: knows only its own password), after two that are tried and do not match.
LABEL_DIRECT: Final = "direct"
LABEL_BARE: Final = "pgwire, no middleware"
LABEL_ALL: Final = "pgwire, rewrite+guard+audit"

#: Where each middleware lives: (module, class).
class Skip(Exception):
    """A variant cannot run here: the message says why."""


# ---------------------------------------------------------------------------
# Building the middleware (or saying why not)


def middleware_class(name: str) -> Any:
    """The class ``name`` of MIDDLEWARE, or Skip naming what is missing."""
    module_name, attribute = MIDDLEWARE[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Skip(f"{module_name} is not importable ({exc})") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise Skip(f"{module_name} has no {attribute}")
    return found


def require_pglast() -> None:
    if importlib.util.find_spec("pglast") is None:
        raise Skip("pglast is not installed (pip install 'pgwire[sql]')")


def build(name: str, *args: Any, **kwargs: Any) -> Middleware[Any]:
    """An instance of middleware ``name``; Skip if it is missing or its API differs."""
    if name == "RoleGuard":
        require_pglast()
    cls = middleware_class(name)
    try:
        instance: Middleware[Any] = cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise Skip(f"{name}({', '.join(map(repr, args))}, ...) failed: {exc}") from None
    return instance


def role_rewrite() -> Middleware[Any]:
    return build("RoleRewrite", "map", rules=[dict(rule) for rule in REWRITE_RULES])


def role_guard() -> Middleware[Any]:
    return build("RoleGuard", "deny")


_AUDIT_FILES = itertools.count(1)


def audit(directory: Path) -> Middleware[Any]:
    """Audit writing a new hash chain to a file of its own in ``directory``."""
    try:
        sink = importlib.import_module("pgwire.audit").JsonLinesSink
    except (ImportError, AttributeError) as exc:
        raise Skip(f"pgwire.audit has no JsonLinesSink ({exc})") from None
    return build("Audit", sink(directory / f"audit-{next(_AUDIT_FILES)}.jsonl"))


class DiscardingSink:
    """An audit sink that writes nothing: what Audit costs before any record is written."""

    def write(self, records: Sequence[object]) -> None:
        pass

    def close(self) -> None:
        pass


def audit_discarding() -> Middleware[Any]:
    return build("Audit", DiscardingSink())


def reads_like(name: str) -> Middleware[Any]:
    """A middleware that asks for the message types ``name`` reads, and does nothing
    with them: the engine's share of that middleware's cost (decoding, dispatch)."""
    model = middleware_class(name)
    watcher = type(f"ReadsLike{name}", (Middleware,), {
        "client_messages": model.client_messages, "server_messages": model.server_messages})
    instance: Middleware[Any] = watcher()
    return instance


def flush(chain: Sequence[Middleware[Any]]) -> None:
    """Wait for every Audit of the chain to write what it queued."""
    for middleware in chain:
        waiting = getattr(middleware, "flush", None)
        if waiting is not None:
            waiting()


# ---------------------------------------------------------------------------
# The conversations, encoded once


def encode(*messages: pw.Message) -> bytes:
    return b"".join(message.encode() for message in messages)


ABALANCE: Final = pw.FieldDescription(name="abalance", table_oid=16397,
                                      column_attribute_number=3, data_type_oid=23,
                                      data_type_size=4)
TEXT_COLUMNS: Final = tuple(pw.FieldDescription(name=name, data_type_oid=19, data_type_size=64)
                            for name in ("current_user", "session_user", "current_setting"))

STARTUP: Final = pw.StartupMessage.from_dict(
    {"user": USER, "database": DATABASE, "application_name": "pgbench"})
#: What PostgreSQL 15 reports at login (trust: no password exchange).
LOGIN_ANSWER: Final = (
    pw.AuthenticationOk(),
    *(pw.ParameterStatus(name=name, value=value) for name, value in (
        ("application_name", "pgbench"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
        ("default_transaction_read_only", "off"), ("in_hot_standby", "off"),
        ("integer_datetimes", "on"), ("IntervalStyle", "postgres"), ("is_superuser", "on"),
        ("server_encoding", "UTF8"), ("server_version", "15.0"),
        ("session_authorization", USER), ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"))),
    pw.BackendKeyData(process_id=4242, secret_key=b"\x0a\x0b\x0c\x0d"),
    pw.ReadyForQuery(status=IDLE),
)
#: The answer to a query the proxy itself sends (the guard's "who am I").
WHO_ANSWER: Final = (
    pw.RowDescription(fields=TEXT_COLUMNS),
    pw.DataRow(values=(USER.encode(), USER.encode(), b"none")),
    pw.CommandComplete(tag="SELECT 1"),
    pw.ReadyForQuery(status=IDLE),
)
SIMPLE_ANSWER: Final = (
    pw.RowDescription(fields=(ABALANCE,)),
    pw.DataRow(values=(b"0",)),
    pw.CommandComplete(tag="SELECT 1"),
    pw.ReadyForQuery(status=IDLE),
)
PREPARE: Final = (pw.Parse(statement=PREPARED_NAME, query=SELECT_PREPARED), pw.Sync())
PREPARE_ANSWER: Final = (pw.ParseComplete(), pw.ReadyForQuery(status=IDLE))
EXTENDED_ANSWER: Final = (pw.BindComplete(), *SIMPLE_ANSWER)


def extended_request(aid: int) -> tuple[pw.Message, ...]:
    """What libpq sends for PQexecPrepared (pgbench -M prepared), one transaction."""
    return (pw.Bind(statement=PREPARED_NAME, parameters=(str(aid).encode(),)),
            pw.Describe(kind="P"), pw.Execute(), pw.Sync())


_AIDS = itertools.count(1_000_000)


def fresh_aids(count: int) -> list[int]:
    """Account ids never used before in this process: texts the cache has not seen."""
    return [next(_AIDS) for _ in range(count)]


# ---------------------------------------------------------------------------
# A Session driven in memory


def drain(connection: pw.Frontend | pw.Backend) -> list[object]:
    events: list[object] = []
    while (event := connection.next_event()) is not pw.NEED_DATA:
        events.append(event)
    return events


class InMemorySession:
    """One proxy Session between a Frontend (the client) and a Backend (the server).

    :meth:`checked` plays a request through both state machines and checks
    what each side got; the timed loops skip them and feed the session
    encoded bytes directly.
    """

    def __init__(self, chain: Sequence[Middleware[Any]], *, check_protocol: bool = False) -> None:
        self.chain = list(chain)
        self.proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=self.chain,
                                       check_protocol=check_protocol))
        self.session: Session = self.proxy.new_session(CLIENT_ADDRESS)
        self.client = pw.Frontend()
        self.server = pw.Backend()

    def route(self, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, SendToClient):
                self.client.receive_data(action.data)
            elif isinstance(action, SendToUpstream):
                assert action.link == MAIN_LINK, action
                self.server.receive_data(action.data)

    def answer_own_queries(self) -> None:
        """Answer what the proxy asks the server on its own (the guard's queries)."""
        for event in drain(self.server):
            if not isinstance(event, pw.Query):
                raise SystemExit(f"the session sent the server {event!r} on its own")
            self.route(self.session.upstream_data(
                b"".join(self.server.send(message) for message in WHO_ANSWER)))
            self.answer_own_queries()

    def login(self) -> None:
        self.route(self.session.start())
        self.route(self.session.client_data(self.client.send(STARTUP)))
        self.route(self.session.upstream_connected(MAIN_LINK))
        [upstream_startup] = drain(self.server)
        if not isinstance(upstream_startup, pw.StartupMessage):
            raise SystemExit(f"expected the StartupMessage upstream, got {upstream_startup!r}")
        self.route(self.session.upstream_data(
            b"".join(self.server.send(message) for message in LOGIN_ANSWER)))
        events = drain(self.client)
        if not events or not isinstance(events[-1], pw.ReadyForQuery):
            raise SystemExit(f"the login did not end with ReadyForQuery: {events!r}")
        self.answer_own_queries()

    def checked(self, request: Sequence[pw.Message], answer: Sequence[pw.Message]) -> None:
        """Send ``request``, check the server got exactly it, answer, check the client."""
        self.route(self.session.client_data(
            b"".join(self.client.send(message) for message in request)))
        got = drain(self.server)
        if got != list(request):
            raise SystemExit(f"the server got {got!r}, not {list(request)!r}")
        self.route(self.session.upstream_data(
            b"".join(self.server.send(message) for message in answer)))
        self.answer_own_queries()
        seen = drain(self.client)
        if seen != list(answer):
            raise SystemExit(f"the client got {seen!r}, not {list(answer)!r}")


#: A timed run's outcome: (what it did, what it should have done).
Checked = tuple[object, object]


def cycle_runner(wire: InMemorySession, requests: Callable[[], list[bytes]],
                 answer: bytes) -> Runner[Checked]:
    """Time one request/answer cycle per frame of ``requests()`` (built off the clock).

    The outcome is (bytes sent upstream, bytes sent to the client) against
    what forwarding every byte would send.
    """
    session = wire.session
    chain = wire.chain

    def run(_: list[bytes]) -> tuple[Checked, float]:
        frames = requests()
        expected = (sum(map(len, frames)), len(answer) * len(frames))
        client_data = session.client_data
        upstream_data = session.upstream_data
        upstream = to_client = 0
        start = time.perf_counter()
        for frame in frames:
            for action in client_data(frame):
                if type(action) is SendToUpstream:
                    upstream += len(action.data)
            for action in upstream_data(answer):
                if type(action) is SendToClient:
                    to_client += len(action.data)
        flush(chain)
        seconds = time.perf_counter() - start
        return ((upstream, to_client), expected), seconds

    return run


def logins_runner(chain: list[Middleware[Any]], count: int) -> tuple[Runner[Checked], Proxy]:
    """Time ``count`` logins (each ended by Terminate) through sessions of one proxy.

    One login is first played through real state machines, to check it. The
    outcome is how many sessions reached READY against ``count``. Returns the
    runner and the proxy (close it when done: it closes the middleware).
    """
    InMemorySession(chain).login()
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=chain))
    startup = STARTUP.encode()
    login_answer = encode(*LOGIN_ANSWER)
    who_answer = encode(*WHO_ANSWER)
    terminate = pw.Terminate().encode()

    def run(_: list[bytes]) -> tuple[Checked, float]:
        ready = 0
        start = time.perf_counter()
        for _login in range(count):
            session = proxy.new_session(CLIENT_ADDRESS)
            session.start()
            session.client_data(startup)
            session.upstream_connected(MAIN_LINK)
            actions = session.upstream_data(login_answer)
            if any(type(action) is SendToUpstream for action in actions):
                session.upstream_data(who_answer)  # the guard's "who am I", answered
            if session.state is SessionState.READY:
                ready += 1
            session.client_data(terminate)
            session.closed()
        flush(chain)
        return (ready, count), time.perf_counter() - start

    return run, proxy


# ---------------------------------------------------------------------------
# The micro-benchmarks


def check_outcome(name: str, outcome: Checked) -> None:
    done, expected = outcome
    if done != expected:
        raise SystemExit(f"{name}: the run did {done!r}, expected {expected!r}")


@dataclass(frozen=True, slots=True)
class Variant:
    """One row of a micro table: how to set it up, and per what its time is given."""

    label: str
    setup: Callable[[], Runner[Checked]]
    units: int


@dataclass(slots=True)
class Row:
    """A micro table's line: microseconds per unit, or why the variant was skipped."""

    label: str
    microseconds: float | None = None
    skipped: str | None = None


class Micro:
    """Builds the variants, keeps what must be closed, times a table."""

    def __init__(self, statements: int, logins: int, directory: Path) -> None:
        self.statements = statements
        self.logins = logins
        self.directory = directory
        self.closers: list[Callable[[], None]] = []
        self.runners: dict[str, Runner[Checked]] = {}

    def close(self) -> None:
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()

    # -- chains --------------------------------------------------------------------

    def chain(self, *names: str) -> list[Middleware[Any]]:
        """Fresh instances, in the proxy's order: Audit first, then RoleRewrite, RoleGuard.

        Two stand-ins exist for attributing costs: ``Audit-discarding`` (Audit
        with a sink that writes nothing) and ``ReadsLikeRoleGuard`` (reads
        what the guard reads, does nothing).
        """
        makers: dict[str, Callable[[], Middleware[Any]]] = {
            "ReadsLikeRoleGuard": lambda: reads_like("RoleGuard"),
            "Audit": lambda: audit(self.directory),
            "Audit-discarding": audit_discarding,
            "RoleRewrite": role_rewrite,
            "RoleGuard": role_guard,
        }
        return [make() for name, make in makers.items() if name in names]

    # -- (a) ---------------------------------------------------------------------

    def analyze_runner(self, *, cached: bool) -> Runner[Checked]:
        require_pglast()
        try:
            analyze = importlib.import_module("pgwire.roles._sql").analyze
        except ImportError as exc:
            raise Skip(f"pgwire.roles._sql is not importable ({exc})") from None
        count = self.statements
        text = SELECT_TEXT.format(aid=CACHED_AID)
        if analyze(text).error is not None:
            raise SystemExit(f"analyze() could not parse {text!r}")

        def texts() -> list[str]:
            if cached:  # equal texts, distinct objects: each hashed anew, as decoded ones are
                return [text[:7] + text[7:] for _ in range(count)]
            return [SELECT_TEXT.format(aid=aid) for aid in fresh_aids(count)]

        def run(_: list[bytes]) -> tuple[Checked, float]:
            batch = texts()
            parsed = 0
            start = time.perf_counter()
            for sql in batch:
                if analyze(sql).error is None:
                    parsed += 1
            return (parsed, count), time.perf_counter() - start

        return run

    # -- (b), (d) ------------------------------------------------------------------

    def session_runner(self, names: Sequence[str], *, extended: bool, cached: bool,
                       check_protocol: bool = False) -> Runner[Checked]:
        wire = InMemorySession(self.chain(*names), check_protocol=check_protocol)
        self.closers.append(wire.proxy.close)
        wire.login()
        count = self.statements
        if extended:
            wire.checked(PREPARE, PREPARE_ANSWER)
            wire.checked(extended_request(CACHED_AID), EXTENDED_ANSWER)
            answer = encode(*EXTENDED_ANSWER)

            def requests() -> list[bytes]:
                return [encode(*extended_request(aid)) for aid in fresh_aids(count)]
        else:
            first = SELECT_TEXT.format(aid=CACHED_AID if cached else next(_AIDS))
            wire.checked((pw.Query(query=first),), SIMPLE_ANSWER)
            answer = encode(*SIMPLE_ANSWER)
            cached_frame = pw.Query(query=first).encode()

            def requests() -> list[bytes]:
                if cached:
                    return [cached_frame] * count
                return [pw.Query(query=SELECT_TEXT.format(aid=aid)).encode()
                        for aid in fresh_aids(count)]

        return cycle_runner(wire, requests, answer)

    # -- (c) -------------------------------------------------------------------------

    def login_runner(self, names: Sequence[str]) -> Runner[Checked]:
        timed, proxy = logins_runner(self.chain(*names), self.logins)
        self.closers.append(proxy.close)
        return timed

    # -- timing ----------------------------------------------------------------------

    def table(self, variants: Sequence[Variant], options: Options) -> list[Row]:
        """Set up every variant (a Skip becomes its row), time the rest together."""
        rows: dict[str, Row] = {}
        runners: dict[str, Runner[Checked]] = {}
        for variant in variants:
            try:
                runners[variant.label] = variant.setup()
                rows[variant.label] = Row(variant.label)
            except Skip as exc:
                rows[variant.label] = Row(variant.label, skipped=str(exc))
        self.runners.update(runners)
        if runners:
            best = measure(runners, [], options.repeat, options.disable_gc, check_outcome)
            units = {variant.label: variant.units for variant in variants}
            for label, seconds in best.items():
                rows[label].microseconds = seconds / units[label] * 1e6
        return [rows[variant.label] for variant in variants]


def print_table(title: str, unit: str, rows: Sequence[Row], baseline: str | None) -> None:
    """One micro table: time per unit and, with a baseline row, the multiple of its time."""
    print()
    print(title)
    width = max(len(row.label) for row in rows) + 2
    against = next((row.microseconds for row in rows if row.label == baseline), None)
    header = f"  {'variant':<{width}} {unit:>10}"
    print(header + (f"  {'time vs baseline':>16}" if baseline else ""))
    for row in rows:
        if row.microseconds is None:
            print(f"  {row.label:<{width}} skipped: {row.skipped}")
            continue
        line = f"  {row.label:<{width}} {row.microseconds:>10.2f}"
        if baseline is not None:
            line += f"  {bench_proxy.ratio(row.microseconds, against):>16}"
        print(line)


BASELINE: Final = "none (baseline)"
READS_LIKE_GUARD: Final = "no-op reading the guard's types"
AUDIT_DISCARDING: Final = "Audit, sink discards"
ALL_THREE: Final = ("Audit", "RoleRewrite", "RoleGuard")


def run_micro(args: argparse.Namespace, options: Options, directory: Path) -> None:
    micro = Micro(args.statements, args.logins, directory)
    statements, logins = args.statements, args.logins
    try:
        def simple(names: Sequence[str], cached: bool = False,
                   check_protocol: bool = False) -> Callable[[], Runner[Checked]]:
            return lambda: micro.session_runner(names, extended=False, cached=cached,
                                                check_protocol=check_protocol)

        def extended(names: Sequence[str],
                     check_protocol: bool = False) -> Callable[[], Runner[Checked]]:
            return lambda: micro.session_runner(names, extended=True, cached=True,
                                                check_protocol=check_protocol)

        analysis = micro.table([
            Variant("first time (a new literal each)",
                    lambda: micro.analyze_runner(cached=False), statements),
            Variant("cached (the same text)", lambda: micro.analyze_runner(cached=True),
                    statements),
        ], options)
        print_table(f"(a) pgwire.roles._sql.analyze, pgbench's SELECT, {statements:,} "
                    "statements per run", "µs/stmt", analysis, None)
        first, cached = (row.microseconds for row in analysis)
        if first is not None and cached is not None:
            print(f"  first time / cached: {first / cached:.0f}x")

        print_table(
            f"(b, d) simple protocol through an in-memory Session: Query -> RowDescription, "
            f"DataRow, CommandComplete, ReadyForQuery; {statements:,} statements per run",
            "µs/stmt", micro.table([
                Variant(BASELINE, simple(()), statements),
                Variant("none, check_protocol = true", simple((), check_protocol=True),
                        statements),
                Variant("RoleRewrite (map)", simple(("RoleRewrite",)), statements),
                Variant(READS_LIKE_GUARD, simple(("ReadsLikeRoleGuard",)), statements),
                Variant("RoleGuard deny, first time", simple(("RoleGuard",)), statements),
                Variant("RoleGuard deny, cached", simple(("RoleGuard",), cached=True),
                        statements),
                Variant(f"{AUDIT_DISCARDING}, cached", simple(("Audit-discarding",), cached=True),
                        statements),
                Variant("Audit (JSON Lines), first time", simple(("Audit",)), statements),
                Variant("Audit (JSON Lines), cached", simple(("Audit",), cached=True),
                        statements),
                Variant("all three, first time", simple(ALL_THREE), statements),
                Variant("all three, cached", simple(ALL_THREE, cached=True), statements),
            ], options), BASELINE)

        print_table(
            f"(b, d) extended protocol (pgbench -M prepared): Bind, Describe, Execute, Sync -> "
            f"BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery; "
            f"{statements:,} per run", "µs/stmt", micro.table([
                Variant(BASELINE, extended(()), statements),
                Variant("none, check_protocol = true", extended((), check_protocol=True),
                        statements),
                Variant(READS_LIKE_GUARD, extended(("ReadsLikeRoleGuard",)), statements),
                Variant("RoleGuard deny", extended(("RoleGuard",)), statements),
                Variant(AUDIT_DISCARDING, extended(("Audit-discarding",)), statements),
                Variant("Audit (JSON Lines)", extended(("Audit",)), statements),
                Variant("all three", extended(ALL_THREE), statements),
            ], options), BASELINE)

        print_table(
            f"(c) login through an in-memory Session: StartupMessage ... ReadyForQuery, "
            f"Terminate; {logins:,} logins per run", "µs/login", micro.table([
                Variant(BASELINE, lambda: micro.login_runner(()), logins),
                Variant("RoleRewrite (map, 3 rules)",
                        lambda: micro.login_runner(("RoleRewrite",)), logins),
                Variant("RoleGuard deny (+ its login query)",
                        lambda: micro.login_runner(("RoleGuard",)), logins),
                Variant("Audit (JSON Lines)", lambda: micro.login_runner(("Audit",)), logins),
                Variant("all three", lambda: micro.login_runner(ALL_THREE), logins),
            ], options), BASELINE)

        if args.profile:
            for label in ("RoleGuard deny, first time", "RoleGuard deny, cached"):
                runner = micro.runners.get(label)
                if runner is not None:
                    print(f"\ncProfile of (b) {label}, {statements:,} statements:")
                    profile(runner, [])
    finally:
        micro.close()


# ---------------------------------------------------------------------------
# The macro-benchmark: pgbench -S through the proxy


def check_middleware_available() -> None:
    """TargetSkipped when a middleware of the chain (or pglast) is missing here."""
    try:
        for name in MIDDLEWARE:
            middleware_class(name)
        require_pglast()
    except Skip as exc:
        raise TargetSkipped(str(exc)) from None


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as file:
        return sum(1 for _ in file)


def print_macro_report(results: dict[str, dict[str, Result]], header: Sequence[str],
                       bench: Bench, audit_records: int | None) -> None:
    bench_proxy.print_report(results, header, bench, baseline=LABEL_BARE,
                             baseline_title="vs no middleware")
    bench_proxy.print_summary(results, LABEL_ALL, LABEL_BARE, "all three/no middleware")
    if audit_records is not None:
        print(f"audit records written by the proxy: {audit_records:,}")


def run_macro(args: argparse.Namespace, directory: Path) -> int:
    """pgbench -S against the three targets; the exit status (1 if a run failed)."""
    try:
        bindir = find_postgres_bindir()
    except ClusterUnavailable as exc:
        bench_proxy.fail(str(exc))
    pgbench = bench_proxy.find_pgbench(bindir)
    if pgbench is None:
        bench_proxy.fail(f"pgbench is neither in {bindir} nor on PATH: install the PostgreSQL "
                         "client programs (apt-get install postgresql-client), or run with "
                         "--micro-only")
    pgwire_command = [sys.executable, "-m", "pgwire", "proxy"]
    audit_path = directory / "proxy-audit.jsonl"
    config_path = directory / "pgwire.toml"
    audit_records: int | None = None

    with PostgresCluster(bindir=bindir, ssl=False, auth="scram-sha-256") as cluster:
        bench = Bench(program=pgbench, user=cluster.superuser,
                      password=cluster.superuser_password, clients=args.clients,
                      threads=args.threads, seconds=args.seconds)
        bench_proxy.progress(f"pgbench -i -s {args.scale} on PostgreSQL at "
                             f"{cluster.host}:{cluster.port}")
        bench.initialise(cluster.port, args.scale)
        server_version = cluster.sql("show server_version")
        config_path.write_text(middleware_config(cluster.port, audit_path))
        command_all = [*pgwire_command, "--config", str(config_path)]

        @contextlib.contextmanager
        def direct() -> Iterator[int]:
            yield cluster.port

        @contextlib.contextmanager
        def bare() -> Iterator[int]:
            bench_proxy.check_pgwire_command(pgwire_command, overridden=False)
            with bench_proxy.running("pgwire proxy",
                                     bench_proxy.pgwire_argv(pgwire_command, cluster.port)) as port:
                yield port

        @contextlib.contextmanager
        def with_all() -> Iterator[int]:
            nonlocal audit_records
            check_middleware_available()
            bench_proxy.check_pgwire_command(pgwire_command, overridden=False)
            try:
                with bench_proxy.running("pgwire proxy with middleware",
                                         bench_proxy.pgwire_argv(command_all, cluster.port)
                                         ) as port:
                    yield port
            finally:  # the proxy has stopped (and flushed its audit queue) by now
                audit_records = count_lines(audit_path)

        targets: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
            LABEL_DIRECT: direct, LABEL_BARE: bare, LABEL_ALL: with_all,
        }
        results: dict[str, dict[str, Result]] = {}
        for round_number in range(1, args.rounds + 1):
            for label, target in targets.items():
                previous = results.get(label)
                if previous is not None and any(r.tps is None for r in previous.values()):
                    continue  # skipped or failed: once is enough
                round_label = f"round {round_number}: " if args.rounds > 1 else ""
                latest = bench_proxy.run_target(round_label + label, target, bench)
                results[label] = bench_proxy.best_of(previous, latest)

    print()
    header = [
        f"pgbench -S (select-only), scale {args.scale}, {args.clients} clients, "
        f"{args.threads} threads, {args.seconds} s per run, "
        + (f"best of {args.rounds} rounds" if args.rounds > 1 else "1 round") + ", TLS off",
        f"{bench_proxy.first_line([pgbench, '--version'])}, PostgreSQL {server_version}",
        f"pgwire proxy command: {shlex.join(pgwire_command)} [--config FILE]; the file "
        "chains Audit (jsonl sink), RoleRewrite (map), RoleGuard (deny)",
    ]
    print_macro_report(results, header, bench, audit_records)
    failed = any(result.failed for by_mode in results.values() for result in by_mode.values())
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# Driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0] if __doc__ else "")
    parser.add_argument("--statements", type=int, default=5_000,
                        help="statements per timed micro run (default 5,000)")
    parser.add_argument("--logins", type=int, default=500,
                        help="logins per timed micro run (default 500)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed micro runs per variant; the best is reported (default 5)")
    parser.add_argument("--disable-gc", action="store_true",
                        help="turn the cyclic garbage collector off during timed micro runs")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile the guard's session variants with cProfile")
    parser.add_argument("--micro-only", action="store_true",
                        help="skip pgbench (no PostgreSQL needed)")
    bench_proxy.add_pgbench_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.statements, args.logins, args.repeat, args.seconds, args.clients,
           args.threads, args.rounds, args.scale) < 1:
        parser.error("every count and duration must be positive")
    args.threads = min(args.threads, args.clients)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, bench_proxy._terminate)
    options = Options(rows=args.statements, repeat=args.repeat, chunk_size=1,
                      disable_gc=args.disable_gc, profile=args.profile)
    started = time.monotonic()
    pglast = "pglast " + (importlib.import_module("pglast").__version__
                          if importlib.util.find_spec("pglast") else "not installed")
    print(f"role middleware benchmark: micro ({args.statements:,} statements, "
          f"{args.logins:,} logins per run)"
          + ("" if args.micro_only else f" and pgbench -S ({args.seconds} s per run)"))
    print_environment(f"{os.cpu_count()} CPUs, {platform.machine()}, {pglast}", options)
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="pgwire-bench-roles-") as name:
            directory = Path(name)
            run_micro(args, options, directory)
            sys.stdout.flush()
            if not args.micro_only:
                status = run_macro(args, directory)
    except (KeyboardInterrupt, bench_proxy.Terminated) as exc:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
    print(f"total time: {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
