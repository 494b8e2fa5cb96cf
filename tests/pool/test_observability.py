"""Watching the pool: snapshots, the Prometheus text, the admin console.

The first part needs no network. The Prometheus text is parsed back line by
line with a strict parser written from the 0.0.4 format's rules, so a
missing ``# HELP``/``# TYPE``, a counter without ``_total`` or a label value
escaped wrongly fails here rather than in a scraper. The admin console's
conversation runs against pgwire's own client, in memory.

The live part runs a pooled proxy on each adapter in front of the session's
PostgreSQL, with the admin console and the metrics endpoint beside it, and
asks them what a real client just did: ``psql`` against the console,
``urllib`` against ``/metrics``, psycopg through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.adapters import blocking
from pgwire.adapters.admin import (
    PROMETHEUS_CONTENT_TYPE,
    AdminConversation,
    AdminServer,
    serve_admin,
    serve_metrics,
)
from pgwire.adapters.asyncio import start_proxy as start_asyncio_proxy
from pgwire.adapters.trio import TrioProxy
from pgwire.auth import scram_sha_256_secret
from pgwire.client import ClientConnection
from pgwire.proxy import PoolConfig, Proxy, ProxyAuth, ProxyConfig, ProxyStats
from pgwire.proxy._metrics import ADMIN_COMMANDS, admin_rows, prometheus_text, snapshot
from pgwire.proxy._pool import PoolKeyStats
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName

UPSTREAM = ("127.0.0.1", 5432)  # never connected to by the offline tests
HOSTILE_NAMES = ('quote"d', "back\\slash", "new\nline", 'all"\\\n"three', "Zoë ☃", "{}=,")

# -- a strict reader of the Prometheus text format 0.0.4 ----------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class Exposition:
    """What a scrape holds: families (name -> type, help) and samples, in order."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def value(self, name: str, **labels: str) -> float:
        found = [v for n, lab, v in self.samples if n == name and lab == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [labels for n, labels, _ in self.samples if n == name]


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL_NAME.match(text, position)
        assert match is not None, f"bad label name at {text[position:]!r}"
        name = match.group()
        position = match.end()
        assert text[position:position + 2] == '="', f"expected =\" after {name!r}"
        position += 2
        value: list[str] = []
        while True:
            char = text[position]
            position += 1
            if char == '"':
                break
            if char == "\\":
                escaped = text[position]
                position += 1
                assert escaped in _ESCAPES, f"bad escape \\{escaped} in {text!r}"
                value.append(_ESCAPES[escaped])
            else:
                assert char != "\n"
                value.append(char)
        assert name not in labels, f"label {name!r} twice"
        labels[name] = "".join(value)
        if position < len(text):
            assert text[position] == ",", f"expected , at {text[position:]!r}"
            position += 1
    return labels


def parse_exposition(text: str) -> Exposition:
    """Parse ``text``, asserting every rule of the format a sample must follow."""
    assert text.endswith("\n"), "the text must end with a line feed"
    found = Exposition()
    sample_line = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name), name
            assert name not in found.helps, f"HELP for {name} twice"
            assert name not in [n for n, _, _ in found.samples], f"HELP after {name}'s samples"
            assert "\\" not in help_text.replace("\\\\", "").replace("\\n", ""), help_text
            found.helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in found.types, f"TYPE for {name} twice"
            assert name not in [n for n, _, _ in found.samples], f"TYPE after {name}'s samples"
            found.types[name] = kind
        else:
            assert not line.startswith("#"), f"an unknown comment: {line!r}"
            match = sample_line.fullmatch(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            number = float(value)  # also NaN, +Inf, -Inf
            found.samples.append((name, _parse_labels(labels or ""), number))
    for name, _, _ in found.samples:
        assert name.startswith("pgwire_"), name
        assert name in found.helps and name in found.types, f"{name} lacks HELP or TYPE"
        assert (found.types[name] == "counter") == name.endswith("_total"), name
    seen = [(name, tuple(sorted(labels.items()))) for name, labels, _ in found.samples]
    assert len(seen) == len(set(seen)), "a sample repeated"
    return found


def pool_row(user: str, database: str, **values: float) -> dict[str, Any]:
    row: dict[str, Any] = {"user": user, "database": database, "mode": "transaction",
                           "clients": 0, "clients_waiting": 0, "servers_active": 0,
                           "servers_idle": 0, "servers_checking": 0,
                           "servers_connecting": 0}
    row.update(PoolKeyStats().as_dict())
    row.update(values)
    return row


def synthetic_snapshot(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"taken_at": 0.0, "proxy": ProxyStats(logins=3).as_dict(), "shutting_down": False,
            "pool": {"mode": "transaction", "max_size": 4}, "pools": list(rows),
            "servers": [], "sessions": []}


# -- the Prometheus text -------------------------------------------------------------------


def test_every_counter_and_gauge_is_exposed_with_help_and_type() -> None:
    snap = synthetic_snapshot(pool_row("app", "db", checkouts=7, wait_seconds=0.25,
                                       servers_idle=2, clients=3, login_failures=1))
    scrape = parse_exposition(prometheus_text(snap))
    labels = {"user": "app", "database": "db", "mode": "transaction"}
    for name in ProxyStats().as_dict():
        assert scrape.types[f"pgwire_{name}_total"] == "counter"
    assert scrape.value("pgwire_logins_total") == 3
    for name in PoolKeyStats().as_dict():
        assert scrape.types[f"pgwire_pool_{name}_total"] == "counter"
    assert scrape.value("pgwire_pool_checkouts_total", **labels) == 7
    assert scrape.value("pgwire_pool_wait_seconds_total", **labels) == 0.25
    assert scrape.value("pgwire_pool_login_failures_total", **labels) == 1
    assert scrape.value("pgwire_pool_clients", **labels) == 3
    assert scrape.types["pgwire_pool_clients"] == "gauge"
    assert scrape.value("pgwire_pool_servers", **labels, state="idle") == 2
    assert scrape.value("pgwire_pool_servers", **labels, state="active") == 0
    assert scrape.value("pgwire_pool_max_size") == 4
    assert scrape.value("pgwire_sessions", state="ready") == 0


def test_a_proxy_without_a_pool_exposes_no_pool_metrics() -> None:
    snap = synthetic_snapshot()
    snap["pool"] = None
    scrape = parse_exposition(prometheus_text(snap))
    assert not [name for name in scrape.types if name.startswith("pgwire_pool_")]
    assert scrape.value("pgwire_shutting_down") == 0


def test_label_values_with_quotes_backslashes_and_newlines_are_escaped() -> None:
    rows = [pool_row(name, f"db {name}", checkouts=index)
            for index, name in enumerate(HOSTILE_NAMES)]
    text = prometheus_text(synthetic_snapshot(*rows))
    assert 'user="quote\\"d"' in text
    assert 'user="back\\\\slash"' in text
    assert 'user="new\\nline"' in text
    scrape = parse_exposition(text)
    for index, name in enumerate(HOSTILE_NAMES):
        assert scrape.value("pgwire_pool_checkouts_total", user=name, database=f"db {name}",
                            mode="transaction") == index


@settings(max_examples=150, deadline=None)
@given(user=st.text(), database=st.text(min_size=1),
       waited=st.floats(min_value=0, allow_nan=False) | st.just(math.inf))
def test_any_user_and_database_name_round_trips(user: str, database: str,
                                                waited: float) -> None:
    scrape = parse_exposition(prometheus_text(synthetic_snapshot(
        pool_row(user, database, wait_seconds=waited))))
    labels = {"user": user, "database": database, "mode": "transaction"}
    assert scrape.value("pgwire_pool_wait_seconds_total", **labels) == waited
    assert {"state": "checking", **labels} in scrape.labelled("pgwire_pool_servers")


# -- snapshots of a real engine, without a network ---------------------------------------------


def trust_pool_proxy(mode: str = "transaction") -> Proxy:
    return Proxy(ProxyConfig(upstream=UPSTREAM, auth=ProxyAuth(method="trust"),
                             pool=PoolConfig(mode=mode, max_size=3)))  # type: ignore[arg-type]


def log_in(proxy: Proxy, user: str, address: tuple[str, int]) -> None:
    """A client that logs in with trust: its session waits for the pool's first
    server connection, which never connects (no adapter runs)."""
    session = proxy.new_session(address)
    session.start()
    startup = pw.StartupMessage.from_dict({"user": user, "database": "app db"})
    session.client_data(pw.Frontend().send(startup))


def test_a_snapshot_of_a_real_engine_shows_its_sessions_and_connecting_servers() -> None:
    proxy = trust_pool_proxy()
    for port, user in enumerate(HOSTILE_NAMES, 40000):
        log_in(proxy, user, ("127.0.0.1", port))
    snap = snapshot(proxy)
    assert [s["user"] for s in snap["sessions"]] == list(HOSTILE_NAMES)
    first = snap["sessions"][0]
    assert first == {"session_id": 1, "state": "connecting",
                     "client_address": "127.0.0.1:40000", "user": HOSTILE_NAMES[0],
                     "database": "app db", "upstream_user": HOSTILE_NAMES[0],
                     "transaction_status": "I", "server": None, "pinned": []}
    assert sorted(row["user"] for row in snap["pools"]) == sorted(HOSTILE_NAMES)
    assert all(row["servers_connecting"] == 1 and row["clients_waiting"] == 1
               for row in snap["pools"])
    assert len(snap["servers"]) == len(HOSTILE_NAMES)
    server = snap["servers"][0]
    assert server["state"] == "connecting" and server["backend_pid"] is None
    assert server["idle_seconds"] is None and server["dirty"] == [] and server["prepared"] == 0
    assert snap["proxy"]["sessions_started"] == len(HOSTILE_NAMES)
    assert snap["pool"] == {"mode": "transaction", "max_size": 3}
    scrape = parse_exposition(prometheus_text(snap))
    assert scrape.value("pgwire_sessions", state="connecting") == len(HOSTILE_NAMES)
    for user in HOSTILE_NAMES:
        assert scrape.value("pgwire_pool_clients_waiting", user=user, database="app db",
                            mode="transaction") == 1


def test_a_snapshot_is_a_copy_that_later_engine_work_does_not_change() -> None:
    proxy = trust_pool_proxy()
    log_in(proxy, "alice", ("127.0.0.1", 40000))
    before = snapshot(proxy)
    log_in(proxy, "bob", ("127.0.0.1", 40001))
    assert len(before["sessions"]) == 1 and len(before["pools"]) == 1
    assert before["proxy"]["sessions_started"] == 1
    assert len(snapshot(proxy)["sessions"]) == 2


def test_a_proxy_without_a_pool_has_no_pool_rows() -> None:
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM))
    proxy.new_session("/tmp/.s.PGSQL.6432").start()
    snap = snapshot(proxy)
    assert (snap["pool"], snap["pools"], snap["servers"]) == (None, [], [])
    assert snap["sessions"][0]["client_address"] == "/tmp/.s.PGSQL.6432"
    assert snap["sessions"][0]["user"] is None


# -- the admin console's rows ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["SHOW POOLS", "show pools", "  Show   Pools ;  ",
                                     "show pools;", "SHOW\tPOOLS\n"])
def test_commands_are_read_in_any_case_and_spacing(command: str) -> None:
    snap = synthetic_snapshot(pool_row("app", "db", clients=2))
    assert admin_rows(snap, command) == admin_rows(snap, "SHOW POOLS")


@pytest.mark.parametrize("command", ["SHOW POOL", "SELECT 1", "", ";", "SHOW POOLS; SHOW STATS",
                                     "SHOW POOLS;;", "SHOWPOOLS", "DISCARD ALL"])
def test_an_unknown_command_is_a_value_error_listing_the_commands(command: str) -> None:
    with pytest.raises(ValueError, match="unknown admin command") as caught:
        admin_rows(synthetic_snapshot(), command)
    for known in ADMIN_COMMANDS:
        assert known in str(caught.value)


def test_show_pools_has_one_row_per_key_with_the_gauges() -> None:
    snap = synthetic_snapshot(pool_row("app", "db", clients=2, servers_idle=1),
                              pool_row("etl", "dw", clients_waiting=4))
    columns, rows = admin_rows(snap, "SHOW POOLS")
    assert columns == ["user", "database", "mode", "clients", "clients_waiting",
                       "servers_active", "servers_idle", "servers_checking",
                       "servers_connecting"]
    assert rows == [("app", "db", "transaction", 2, 0, 0, 1, 0, 0),
                    ("etl", "dw", "transaction", 0, 4, 0, 0, 0, 0)]


def test_show_stats_lists_every_proxy_counter_and_every_pool_counter() -> None:
    snap = synthetic_snapshot(pool_row("app", "db", checkouts=5))
    columns, rows = admin_rows(snap, "SHOW STATS")
    assert columns == ["user", "database", "counter", "value"]
    proxy_rows = {row[2]: row[3] for row in rows if row[0] is None}
    assert proxy_rows == ProxyStats(logins=3).as_dict()
    pool_rows = {row[2]: row[3] for row in rows if row[0] == "app"}
    assert pool_rows == {**PoolKeyStats().as_dict(), "checkouts": 5}


def test_show_servers_clients_and_help_from_a_real_engine() -> None:
    proxy = trust_pool_proxy()
    log_in(proxy, "alice", ("::1", 40000))
    snap = snapshot(proxy)
    columns, rows = admin_rows(snap, "show clients")
    assert dict(zip(columns, rows[0], strict=True)) == {
        "session_id": 1, "state": "connecting", "client_address": "[::1]:40000",
        "user": "alice", "database": "app db", "upstream_user": "alice",
        "transaction_status": "I", "server": None, "pinned": ""}
    columns, rows = admin_rows(snap, "show servers")
    server = dict(zip(columns, rows[0], strict=True))
    assert (server["user"], server["state"], server["dirty"]) == ("alice", "connecting", "")
    columns, rows = admin_rows(snap, "show help")
    assert [row[0] for row in rows] == list(ADMIN_COMMANDS)


# -- the admin console's conversation, in memory -------------------------------------------------


class Console:
    """pgwire's client talking to an :class:`AdminConversation` in memory."""

    def __init__(self, conversation: AdminConversation, client: ClientConnection) -> None:
        self.conversation = conversation
        self.client = client
        client.start()

    def exchange(self, *messages: pw.Message) -> list[pw.Message]:
        """Send ``messages``; the server's answers up to ReadyForQuery, or until it closed."""
        for message in messages:
            self.client.send(message)
        events: list[pw.Message] = []
        while True:
            data = self.client.data_to_send()
            if data or not self.conversation.closed:
                self.client.receive_data(self.conversation.receive(data))
            while (event := self.client.next_event()) is not pw.NEED_DATA:
                assert isinstance(event, pw.Message), event
                events.append(event)
                if isinstance(event, pw.ReadyForQuery) and not self.client.frontend.busy:
                    return events
            if self.conversation.closed and not self.client.data_to_send():
                return events


def console(snap: Callable[[], Mapping[str, Any]] | None = None, *, password: str = "ops-pw",
            secret: str = "ops-pw", refuse: bool = False) -> tuple[Console, list[pw.Message]]:
    conversation = AdminConversation(snap or (lambda: synthetic_snapshot(pool_row("app", "db"))),
                                     {"ops": secret}, process_id=7, refuse=refuse)
    client = ClientConnection(user="ops", database="pgwire", password=password,
                              sslmode="disable")
    talk = Console(conversation, client)
    return talk, talk.exchange()


def errors(events: list[pw.Message]) -> list[tuple[str | None, str | None, str | None]]:
    return [(e.severity, e.code, e.message) for e in events if isinstance(e, pw.ErrorResponse)]


def test_the_console_logs_in_with_scram_and_answers_show_commands() -> None:
    talk, login = console(secret=scram_sha_256_secret("ops-pw"))
    assert isinstance(login[-1], pw.ReadyForQuery)
    assert talk.client.authentication_method == "scram-sha-256"
    assert talk.client.frontend.parameters["session_authorization"] == "ops"
    events = talk.exchange(pw.Query(query="show pools;"))
    assert [type(e).__name__ for e in events] == [
        "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]
    description, row, complete = events[:3]
    assert isinstance(description, pw.RowDescription)
    assert [f.name for f in description.fields][:3] == ["user", "database", "mode"]
    assert [f.data_type_oid for f in description.fields][:4] == [25, 25, 25, 20]
    assert isinstance(row, pw.DataRow)
    assert row.values[:4] == (b"app", b"db", b"transaction", b"0")
    assert isinstance(complete, pw.CommandComplete) and complete.tag == "SHOW"


def test_several_commands_in_one_query_answer_in_turn_from_one_snapshot() -> None:
    taken: list[int] = []

    def counting() -> Mapping[str, Any]:
        taken.append(1)
        return synthetic_snapshot(pool_row("app", "db", wait_seconds=1.5))

    talk, _ = console(counting)
    events = talk.exchange(pw.Query(query="SHOW HELP; show stats"))
    completes = [e for e in events if isinstance(e, pw.CommandComplete)]
    assert len(completes) == 2 and len(taken) == 1
    descriptions = [e for e in events if isinstance(e, pw.RowDescription)]
    assert [f.data_type_oid for f in descriptions[1].fields] == [25, 25, 25, 701]
    values = [e.values for e in events if isinstance(e, pw.DataRow)]
    assert (b"app", b"db", b"wait_seconds", b"1.5") in values
    assert (None, None, b"logins", b"3") in values


def test_an_empty_answer_still_describes_its_columns() -> None:
    talk, _ = console()
    events = talk.exchange(pw.Query(query="SHOW CLIENTS"))
    assert [type(e).__name__ for e in events] == [
        "RowDescription", "CommandComplete", "ReadyForQuery"]
    description = events[0]
    assert isinstance(description, pw.RowDescription)
    assert [f.name for f in description.fields][:2] == ["session_id", "state"]
    assert {f.data_type_oid for f in description.fields} == {25}


def test_anything_else_gets_0A000_naming_the_commands_and_the_session_goes_on() -> None:
    talk, _ = console()
    events = talk.exchange(pw.Query(query="select 1"))
    ((severity, code, message),) = errors(events)
    assert (severity, code) == ("ERROR", "0A000")
    assert message is not None and all(c in message for c in ADMIN_COMMANDS)
    assert isinstance(events[-1], pw.ReadyForQuery)
    assert isinstance(talk.exchange(pw.Query(query=""))[0], pw.EmptyQueryResponse)
    events = talk.exchange(pw.Query(query="SHOW HELP; SELECT 1; SHOW POOLS"))
    assert [type(e).__name__ for e in events][-3:] == [
        "CommandComplete", "ErrorResponse", "ReadyForQuery"]  # the error stops the rest


def test_the_extended_protocol_is_refused_once_per_batch() -> None:
    talk, _ = console()
    events = talk.exchange(pw.Parse(query="SHOW POOLS"), pw.Bind(), pw.Describe(kind="P"),
                           pw.Execute(), pw.Sync())
    assert [e.code for e in events if isinstance(e, pw.ErrorResponse)] == ["0A000"]
    assert isinstance(events[-1], pw.ReadyForQuery)
    assert len(talk.exchange(pw.Query(query="show help"))) == 8


def test_a_wrong_password_or_an_unknown_user_fails_like_postgresql() -> None:
    _, events = console(password="wrong")
    assert errors(events) == [("FATAL", "28P01", 'password authentication failed for user "ops"')]
    conversation = AdminConversation(lambda: {}, {"ops": "ops-pw"}, process_id=1)
    talk = Console(conversation, ClientConnection(user="mallory", password="ops-pw",
                                                  sslmode="disable"))
    assert errors(talk.exchange())[0][1] == "28P01"
    assert conversation.closed and conversation.user is None


def test_a_client_beyond_the_limit_is_refused_with_53300() -> None:
    _, events = console(refuse=True)
    assert errors(events) == [("FATAL", "53300", "sorry, too many admin clients already")]


def test_a_snapshot_that_fails_is_an_error_not_a_closed_console() -> None:
    def broken() -> Mapping[str, Any]:
        raise TimeoutError("the engine did not answer")

    talk, _ = console(broken)
    events = talk.exchange(pw.Query(query="SHOW POOLS"))
    assert [code for _, code, _ in errors(events)] == ["57P03"]
    assert isinstance(talk.exchange(pw.Query(query="SHOW HELP"))[0], pw.RowDescription)


def test_serve_admin_refuses_no_users_and_md5_secrets() -> None:
    with pytest.raises(ValueError, match="at least one user"):
        serve_admin(dict, ("127.0.0.1", 0), users={})
    with pytest.raises(ValueError, match="MD5 secret"):
        serve_admin(dict, ("127.0.0.1", 0),
                    users={"ops": "md5" + "0" * 32})


# -- live: every adapter, PostgreSQL, psql, urllib, psycopg ----------------------------------

ALICE = "obs_alice"
ALICE_PASSWORD = "obs-alice-pw"
OPS_PASSWORD = "obs-ops-pw"


@pytest.fixture(scope="module")
def cluster(pg_cluster: PostgresCluster) -> PostgresCluster:
    pg_cluster.sql(f"DROP ROLE IF EXISTS {ALICE}; "
                   f"CREATE ROLE {ALICE} LOGIN PASSWORD '{ALICE_PASSWORD}'")
    return pg_cluster


@contextlib.contextmanager
def running_server(config: ProxyConfig, adapter: AdapterName) -> Iterator[tuple[Any, int]]:
    """The adapter's running-proxy object (for its ``snapshot``) and its port."""
    if adapter == "blocking":
        threaded = blocking.start_proxy(config, [("127.0.0.1", 0)])
        try:
            bound = threaded.addresses[0]
            assert not isinstance(bound, str)
            yield threaded, bound[1]
        finally:
            threaded.shutdown(5)
        return
    box: dict[str, Any] = {}
    started = threading.Event()
    if adapter == "asyncio":
        loop = asyncio.new_event_loop()

        async def main_asyncio() -> None:
            box["server"] = await start_asyncio_proxy(config, [("127.0.0.1", 0)])
            started.set()
            await box["server"].serve_until_shutdown()

        thread = threading.Thread(target=loop.run_until_complete, args=(main_asyncio(),))
    else:
        async def main_trio() -> None:
            server = TrioProxy(Proxy(config))
            await server.listen(("127.0.0.1", 0))
            box["server"], box["token"] = server, trio.lowlevel.current_trio_token()
            started.set()
            await server.serve()

        thread = threading.Thread(target=trio.run, args=(main_trio,))
    thread.start()
    try:
        assert started.wait(30)
        server = box["server"]
        yield server, server.addresses[0][1]
    finally:
        if adapter == "asyncio":
            asyncio.run_coroutine_threadsafe(box["server"].shutdown(5), loop).result(20)
        else:
            trio.from_thread.run(box["server"].shutdown, 5, trio_token=box["token"])
        thread.join(20)
        if adapter == "asyncio":
            loop.close()


def psql(cluster: PostgresCluster, admin: AdminServer, command: str, *,
         password: str = OPS_PASSWORD) -> subprocess.CompletedProcess[str]:
    """``psql -c command`` against the admin console, as ``ops``."""
    address = admin.address
    assert not isinstance(address, str)
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10",
           "PGCLIENTENCODING": "UTF8"}
    env.pop("PGSERVICE", None)
    return subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-A", "-F", "|", "-h", "127.0.0.1",
         "-p", str(address[1]), "-U", "ops", "-d", "pgwire", "-c", command],
        env=env, capture_output=True, text=True, timeout=30, check=False)


def table(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    """psql's unaligned output (header, rows, "(n rows)") as dicts."""
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert re.fullmatch(r"\(\d+ rows?\)", lines[-1]), lines
    columns = header.split("|")
    return [dict(zip(columns, line.split("|"), strict=True)) for line in lines[:-1]]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.01)


def scrape(url: str) -> Exposition:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
        return parse_exposition(response.read().decode("utf-8"))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_console_and_metrics_show_what_clients_did_through_each_adapter(
    cluster: PostgresCluster, adapter: AdapterName,
) -> None:
    config = ProxyConfig(
        upstream=(cluster.host, cluster.port),
        auth=ProxyAuth(method="scram-sha-256", users={ALICE: ALICE_PASSWORD}),
        pool=PoolConfig(mode="transaction", max_size=2))
    with running_server(config, adapter) as (server, port), \
            serve_admin(server.snapshot, ("127.0.0.1", 0), users={"ops": OPS_PASSWORD}) as admin, \
            serve_metrics(server.snapshot, ("127.0.0.1", 0)) as metrics:
        through_proxy: dict[str, Any] = {
            "host": "127.0.0.1", "port": port, "user": ALICE, "password": ALICE_PASSWORD,
            "dbname": "postgres", "sslmode": "disable"}
        for _ in range(2):
            with psycopg.connect(**through_proxy, autocommit=True) as conn:
                for number in range(3):
                    assert conn.execute("select %s::int", [number]).fetchone() == (number,)
        with psycopg.connect(**through_proxy, autocommit=True) as held:
            # SET pins the client to its server connection (transaction mode).
            held.execute("SET search_path = public")
            (backend_pid,) = held.execute("select pg_backend_pid()").fetchone() or (0,)
            wait_for(lambda: len(server.snapshot()["sessions"]) == 1,
                     "the two closed clients' sessions to end")
            # A checkout may have opened a second connection while it verified an
            # idle one; let it finish its login so the counts below hold still.
            wait_for(lambda: all(s["state"] in ("idle", "active")
                                 for s in server.snapshot()["servers"]),
                     "every server connection to be idle or active")

            (client,) = table(psql(cluster, admin, "SHOW CLIENTS"))
            assert (client["user"], client["database"], client["state"]) == (
                ALICE, "postgres", "ready")
            assert (client["pinned"], client["transaction_status"]) == ("settings", "I")
            assert client["client_address"].startswith("127.0.0.1:")
            servers = table(psql(cluster, admin, "show servers;"))
            (mine,) = [s for s in servers if s["id"] == client["server"]]
            assert (mine["state"], mine["backend_pid"]) == ("active", str(backend_pid))
            assert mine["session"] == client["session_id"] and mine["idle_seconds"] == ""
            (pool,) = table(psql(cluster, admin, "show POOLS"))
            assert (pool["user"], pool["mode"], pool["clients"]) == (ALICE, "transaction", "1")
            assert pool["servers_active"] == "1"
            assert int(pool["servers_idle"]) == len(servers) - 1

            scraped = scrape(metrics.url)
            stats = server.snapshot()["pools"][0]
            labels = {"user": ALICE, "database": "postgres", "mode": "transaction"}
            checkouts = scraped.value("pgwire_pool_checkouts_total", **labels)
            # Each of the 6 queries and each login took a connection at least once.
            assert checkouts == stats["checkouts"] >= 6 + 3
            assert scraped.value("pgwire_pool_clients", **labels) == 1
            assert scraped.value("pgwire_pool_servers", **labels, state="active") == 1
            assert scraped.value("pgwire_pool_servers_opened_total", **labels) == len(servers)
            assert scraped.value("pgwire_logins_total") == 3
            assert scraped.value("pgwire_sessions", state="ready") == 1
            (counter,) = [row for row in table(psql(cluster, admin, "SHOW STATS"))
                          if row["counter"] == "checkouts"]
            assert (counter["user"], int(counter["value"])) == (ALICE, checkouts)


def test_the_console_refuses_a_wrong_password_and_metrics_only_serve_their_path(
    cluster: PostgresCluster,
) -> None:
    def fixed() -> Mapping[str, Any]:
        return synthetic_snapshot(pool_row("app", "db", checkouts=2))

    secret = scram_sha_256_secret(OPS_PASSWORD)
    with serve_admin(fixed, ("127.0.0.1", 0), users={"ops": secret}) as admin, \
            serve_metrics(fixed, ("127.0.0.1", 0)) as metrics:
        refused = psql(cluster, admin, "SHOW POOLS", password="not-it")
        assert refused.returncode == 2
        assert 'password authentication failed for user "ops"' in refused.stderr
        answered = psql(cluster, admin, "SELECT 1")
        assert answered.returncode == 1 and "SHOW POOLS, SHOW SERVERS" in answered.stderr
        assert table(psql(cluster, admin, "SHOW POOLS"))[0]["user"] == "app"
        base = metrics.url.removesuffix("/metrics")
        for path in ("/", "/metricsx", "/other/metrics"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(base + path, timeout=10)
            assert caught.value.code == 404
        assert scrape(metrics.url + "?name=x").value(
            "pgwire_pool_checkouts_total", user="app", database="db", mode="transaction") == 2
