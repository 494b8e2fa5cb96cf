"""What :func:`pgwire.proxy._pool_state.analyze_session_state` reports, and
whether PostgreSQL agrees.

One table of statements → expected effects covers every kind of session state
and every spelling the module promises (SET in all its forms, LOCAL against
session, set_config in positional and named notation, nested positions, multi-
statement strings, quoted and Unicode-escaped identifiers), plus look-alikes
that must report nothing (comments, strings and dollar quotes that mention
SET ROLE, ``ALTER ... SET``, function SET clauses, ``_xact_`` advisory locks,
``ON COMMIT DROP``, plain EXPLAIN).

The rows marked ``live`` then run on a fresh autocommit connection to a real
PostgreSQL, and the session's state is read back on the same connection
(``pg_settings`` rows with source ``session``, ``current_user`` and
``session_user``, ``pg_prepared_statements``, ``pg_listening_channels()``,
``pg_cursors``, the objects in ``pg_my_temp_schema()``, advisory rows of
``pg_locks``, ``currval``): the kinds found must be exactly the kinds the
analysis reported, and the settings found exactly its ``settings_changed``.
So the table is checked against the server, not only against our beliefs.

Rows that are deliberately not live: ``RESET`` forms and ``SET ROLE NONE``
(they change a setting back to where a fresh session already is, so nothing is
left to see), over-reports the module documents (a call in a definition or
under a CASE that does not run), ``unknown`` texts, and statements that would
change the cluster for other tests (``ALTER SYSTEM``, ``ALTER DATABASE``).

Objects (prefix ``pool_state_``, unique to this module): the NOLOGIN roles
``pool_state_member`` (the superuser may SET ROLE to it) and
``pool_state_alter`` (for ALTER ROLE ... SET), the sequence
``pool_state_seq`` and the table ``pool_state_t``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwire.proxy._pool_state import (
    SESSION_STATE_KINDS,
    StateEffects,
    _analyze,
    _analyze_text,
    analyze_session_state,
)
from pgwire.roles._sql import CACHED_TEXT_LIMIT
from pgwire.testing.cluster import PostgresCluster


@dataclass(frozen=True)
class Case:
    """One statement text and the effects it must report."""

    sql: str
    adds: frozenset[str]
    settings: frozenset[str]
    discard_all: bool
    #: Run it on PostgreSQL and compare with the state found afterwards.
    live: bool

    @property
    def expected(self) -> StateEffects:
        return StateEffects(adds=self.adds, discard_all=self.discard_all,
                            settings_changed=self.settings)


def case(sql: str, *adds: str, settings: tuple[str, ...] = (), discard_all: bool = False,
         live: bool = False) -> Case:
    return Case(sql, frozenset(adds), frozenset(settings), discard_all, live)


def live(sql: str, *adds: str, settings: tuple[str, ...] = ()) -> Case:
    return case(sql, *adds, settings=settings, live=True)


MEMBER = "pool_state_member"

CASES: list[Case] = [
    # -- settings: SET / RESET in every form ----------------------------------------------
    live("SET work_mem = '8MB'", "settings", settings=("work_mem",)),
    live("SET SESSION work_mem TO '8MB'", "settings", settings=("work_mem",)),
    live('SET "Work_Mem" = \'8MB\'', "settings", settings=("work_mem",)),
    case("set WORK_MEM to default", "settings", settings=("work_mem",)),
    live("SET TIME ZONE 'UTC'", "settings", settings=("timezone",)),
    case("SET TIME ZONE LOCAL", "settings", settings=("timezone",)),
    live("SET NAMES 'UTF8'", "settings", settings=("client_encoding",)),
    live("SET SCHEMA 'public'", "settings", settings=("search_path",)),
    live("SET XML OPTION CONTENT", "settings", settings=("xmloption",)),
    case("SET SEED TO 0.5", "settings", settings=("seed",)),  # seed: not in pg_settings
    live("SET search_path FROM CURRENT", "settings", settings=("search_path",)),
    live("SET myapp.tenant = '42'", "settings", settings=("myapp.tenant",)),
    live("BEGIN; SET statement_timeout = 0; COMMIT", "settings",
         settings=("statement_timeout",)),
    live("START TRANSACTION; SET SESSION lock_timeout = '1s'; END", "settings",
         settings=("lock_timeout",)),
    live("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
         "settings", settings=("default_transaction_isolation",)),
    live("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, DEFERRABLE", "settings",
         settings=("default_transaction_read_only", "default_transaction_deferrable")),
    case("RESET work_mem", "settings", settings=("work_mem",)),
    case("RESET ALL", "settings", settings=("all",)),
    case("RESET TIME ZONE", "settings", settings=("timezone",)),
    # set_config(..., false) is a session-level SET
    live("SELECT set_config('work_mem', '8MB', false)", "settings", settings=("work_mem",)),
    live("select pg_catalog.set_config('search_path', 'public', false)", "settings",
         settings=("search_path",)),
    # named notation: PostgreSQL 15's set_config has no argument names (later ones may)
    case("SELECT set_config(setting_name => 'work_mem', new_value => '8MB', "
         "is_local => false)", "settings", settings=("work_mem",)),
    case("SELECT set_config('work_mem', new_value => '8MB', is_local => 'off')", "settings",
         settings=("work_mem",)),
    live("SELECT set_config('work_mem', '8MB', 'off')", "settings", settings=("work_mem",)),
    live("SELECT set_config('work_mem', '8MB', NULL)", "settings", settings=("work_mem",)),
    live("SELECT set_config('work_mem'::text, '8MB', false::boolean)", "settings",
         settings=("work_mem",)),
    live("SELECT set_config('MyApp.Tenant', '7', false)", "settings",
         settings=("myapp.tenant",)),
    live("SELECT 1 FROM pg_class WHERE relname IN "
         "(SELECT set_config('work_mem', '2MB', false))", "settings", settings=("work_mem",)),
    live("WITH s AS (SELECT set_config('work_mem', '2MB', false)) SELECT * FROM s",
         "settings", settings=("work_mem",)),
    live("SELECT coalesce(NULL, upper(set_config('work_mem', '2MB', false)))", "settings",
         settings=("work_mem",)),
    live(r"""SELECT U&"\0073et_config"('work_mem', '2MB', false)""", "settings",
         settings=("work_mem",)),
    live("COPY (SELECT set_config('work_mem', '2MB', false)) TO STDOUT", "settings",
         settings=("work_mem",)),
    # -- settings that end with their transaction, or belong to other sessions ------------
    case("SET LOCAL work_mem = '8MB'"),
    live("BEGIN; SET LOCAL work_mem = '8MB'; COMMIT"),
    live("BEGIN; SET LOCAL TIME ZONE 'UTC'; SELECT 1; COMMIT"),
    live("SELECT set_config('work_mem', '8MB', true)"),
    case("SELECT set_config(is_local => true, new_value => '8MB', setting_name => 'work_mem')"),
    live("SELECT set_config('work_mem', '8MB', 'on'::bool)"),
    case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
    case("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'"),
    live("ALTER TABLE pool_state_t SET (fillfactor = 70)"),
    case("BEGIN; PREPARE TRANSACTION 'pool_state_x'; ROLLBACK PREPARED 'pool_state_x'"),
    live("BEGIN; SET TRANSACTION READ ONLY; SELECT 1; COMMIT"),
    live("ALTER ROLE pool_state_alter SET work_mem = '8MB'"),
    live(f"ALTER ROLE pool_state_alter SET role = '{MEMBER}'"),
    case("ALTER DATABASE postgres SET search_path = public"),
    case("ALTER SYSTEM SET work_mem = '8MB'"),
    live("CREATE OR REPLACE FUNCTION pool_state_f() RETURNS int LANGUAGE sql "
         f"SET work_mem = '8MB' SET role = '{MEMBER}' AS 'SELECT 1'"),
    live("ALTER FUNCTION pool_state_f() SET search_path = public"),
    live("CREATE OR REPLACE PROCEDURE pool_state_p() LANGUAGE sql SET work_mem = '1MB' "
         f"BEGIN ATOMIC SELECT set_config('role', '{MEMBER}', false); "
         "SELECT pg_advisory_lock(1); SELECT nextval('pool_state_seq'); END"),
    live("CREATE OR REPLACE FUNCTION pool_state_g() RETURNS bigint LANGUAGE sql "
         "AS $$ SELECT pg_advisory_lock(1); SELECT nextval('pool_state_seq') $$"),
    live("SELECT current_setting('work_mem'), current_setting('role')"),
    live("SHOW work_mem"),
    live("BEGIN; SET CONSTRAINTS ALL DEFERRED; COMMIT"),
    # mentions that are not statements
    live("SELECT 'SET ROLE pool_state_member'"),
    live("SELECT $$SET ROLE x; SELECT set_config('role', 'x', false)$$"),
    live("SELECT $tag$ LISTEN x; pg_advisory_lock(1) $tag$ AS t"),
    live("-- SET ROLE pool_state_member\nSELECT 1"),
    live("/* SET ROLE x /* nested: LISTEN y */ PREPARE p AS SELECT 1 */ SELECT 1"),
    live('SELECT 1 AS "SET ROLE x", 2 AS "nextval"'),
    live("SELECT E'SET work_mem = \\'1MB\\'' AS s"),
    live('SELECT "set_config" FROM (SELECT 1 AS "set_config") AS s'),
    # -- role ---------------------------------------------------------------------------------
    live(f"SET ROLE {MEMBER}", "role", settings=("role",)),
    live(f"SET SESSION ROLE '{MEMBER}'", "role", settings=("role",)),
    live(f"SET \"Role\" = '{MEMBER}'", "role", settings=("role",)),
    live(rf'SET U&"\0072ole" TO {MEMBER}', "role", settings=("role",)),
    case("SET ROLE NONE", "role", settings=("role",)),
    case("RESET ROLE", "role", settings=("role",)),
    case("SET role TO DEFAULT", "role", settings=("role",)),
    live(f"SET SESSION AUTHORIZATION {MEMBER}", "role", settings=("session_authorization",)),
    case("SET SESSION AUTHORIZATION DEFAULT", "role", settings=("session_authorization",)),
    case("RESET SESSION AUTHORIZATION", "role", settings=("session_authorization",)),
    live(f"SELECT set_config('role', '{MEMBER}', false)", "role", settings=("role",)),
    live(f"SELECT pg_catalog.set_config('Session_Authorization', '{MEMBER}', false)", "role",
         settings=("session_authorization",)),
    live(f"BEGIN; SET ROLE {MEMBER}; COMMIT", "role", settings=("role",)),
    live(f"SELECT * FROM (SELECT set_config('role', '{MEMBER}', false)) AS s", "role",
         settings=("role",)),
    case(f"SET LOCAL ROLE {MEMBER}"),
    live(f"BEGIN; SET LOCAL SESSION AUTHORIZATION {MEMBER}; COMMIT"),
    live(f"BEGIN; SET LOCAL ROLE {MEMBER}; SELECT 1; COMMIT"),
    live(f"SELECT set_config('role', '{MEMBER}', true)"),
    live(f"SET ROLE {MEMBER}; SET work_mem = '1MB'", "role", "settings",
         settings=("role", "work_mem")),
    # -- prepare --------------------------------------------------------------------------
    live("PREPARE pool_state_q AS SELECT 1", "prepare"),
    live("PREPARE pool_state_q (int) AS SELECT $1; EXECUTE pool_state_q(1)", "prepare"),
    live('prepare "Quoted Name" as select 1', "prepare"),
    case("PREPARE pool_state_q AS SELECT nextval('pool_state_seq')", "prepare", "sequence"),
    # a later DEALLOCATE in the same text is not subtracted: "may create" is per statement
    case("PREPARE pool_state_q AS SELECT 1; DEALLOCATE pool_state_q", "prepare"),
    live("DEALLOCATE ALL"),
    # -- listen ---------------------------------------------------------------------------
    live("LISTEN jobs", "listen"),
    live('LISTEN "Jobs Channel"; NOTIFY jobs', "listen"),
    live("NOTIFY jobs; SELECT pg_notify('jobs', 'x')"),
    live("UNLISTEN *"),
    # -- temp -------------------------------------------------------------------------------
    live("CREATE TEMP TABLE pool_state_tmp (a int)", "temp"),
    live("CREATE TEMPORARY TABLE IF NOT EXISTS pool_state_tmp (a int) ON COMMIT DELETE ROWS",
         "temp"),
    live("CREATE LOCAL TEMP TABLE pool_state_tmp (a int) ON COMMIT PRESERVE ROWS", "temp"),
    live("CREATE TABLE pg_temp.pool_state_tmp (a int)", "temp"),
    live('CREATE TABLE "pg_temp".pool_state_tmp (a int)', "temp"),
    live("SELECT 1 AS a INTO TEMP pool_state_tmp", "temp"),
    live("SELECT 1 AS a INTO TEMPORARY TABLE pool_state_tmp", "temp"),
    live("CREATE TEMP TABLE pool_state_tmp AS SELECT 1 AS a", "temp"),
    live("CREATE TEMP TABLE pool_state_tmp AS SELECT 1 AS a WITH NO DATA", "temp"),
    live("CREATE TEMP VIEW pool_state_v AS SELECT 1 AS a", "temp"),
    live("CREATE TEMP SEQUENCE pool_state_s", "temp"),
    live("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "temp"),
    live("CREATE TYPE pg_temp.pair AS (a int, b int)", "temp"),
    live("CREATE DOMAIN pg_temp.posint AS int CHECK (VALUE > 0)", "temp"),
    live("CREATE TYPE pg_temp.mood AS ENUM ('sad', 'ok')", "temp"),
    live("CREATE TEMP TABLE x (a int); CREATE INDEX ON pg_temp.x (a)", "temp"),
    live("EXPLAIN ANALYZE CREATE TEMP TABLE pool_state_tmp AS SELECT 1 AS a", "temp"),
    live("EXPLAIN (ANALYZE, COSTS off) SELECT 1 AS a INTO TEMP pool_state_tmp", "temp"),
    live("CREATE TEMP TABLE pool_state_tmp (a int) ON COMMIT DROP"),
    live("BEGIN; CREATE TEMP TABLE pool_state_tmp ON COMMIT DROP AS SELECT 1 AS a; COMMIT"),
    live("EXPLAIN CREATE TEMP TABLE pool_state_tmp AS SELECT 1 AS a"),
    live("EXPLAIN (ANALYZE false) SELECT 1 AS a INTO TEMP pool_state_tmp"),
    live("CREATE TEMP TABLE x (a int) ON COMMIT DROP; SELECT * FROM pg_temp.x"),
    case('CREATE TABLE "PG_TEMP".x (a int)'),  # a schema of that name, not pg_temp
    case("CREATE UNLOGGED TABLE x (a int); SELECT 1 INTO y FROM x"),
    live("DISCARD TEMP; DISCARD PLANS; DISCARD SEQUENCES"),
    # -- cursor -----------------------------------------------------------------------------
    live("DECLARE pool_state_c CURSOR WITH HOLD FOR SELECT 1", "cursor"),
    live("DECLARE pool_state_c BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM pg_class",
         "cursor"),
    live("BEGIN; DECLARE pool_state_c CURSOR WITH HOLD FOR SELECT 1; COMMIT", "cursor"),
    live("BEGIN; DECLARE pool_state_c CURSOR FOR SELECT 1; COMMIT"),
    live("BEGIN; DECLARE pool_state_c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1; COMMIT"),
    live("DECLARE pool_state_c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)", "cursor",
         "advisory"),
    live("CLOSE ALL"),
    # -- advisory ---------------------------------------------------------------------------
    live("SELECT pg_advisory_lock(1)", "advisory"),
    live("SELECT pg_catalog.pg_advisory_lock_shared(1, 2)", "advisory"),
    live("SELECT pg_try_advisory_lock(hashtext('jobs'))", "advisory"),
    live("select PG_TRY_ADVISORY_LOCK_SHARED(7)", "advisory"),
    live('SELECT "pg_advisory_lock"(3)', "advisory"),
    live(r'SELECT U&"\0070g_advisory_lock"(4)', "advisory"),
    live("WITH l AS (SELECT pg_advisory_lock(5)) SELECT * FROM l", "advisory"),
    live("SELECT * FROM pg_advisory_lock(10) AS l, LATERAL nextval('pool_state_seq') AS n",
         "advisory", "sequence"),
    live("COPY (SELECT pg_advisory_lock(6)) TO STDOUT", "advisory"),
    live("SELECT * FROM (VALUES (1)) AS v(a) WHERE pg_try_advisory_lock(a)", "advisory"),
    live("INSERT INTO pool_state_t SELECT 1 WHERE pg_try_advisory_lock(8)", "advisory"),
    case("SELECT CASE WHEN false THEN pg_advisory_lock(1) END", "advisory"),  # may: not run
    live("SELECT pg_advisory_xact_lock(1), pg_try_advisory_xact_lock(2)"),
    live("SELECT pg_advisory_xact_lock_shared(3), pg_try_advisory_xact_lock_shared(4)"),
    live("SELECT pg_advisory_unlock(1), pg_advisory_unlock_all()"),
    live("EXPLAIN SELECT pg_advisory_lock(1)"),
    case("SELECT myschema.pg_advisory_lock(1)"),  # some other schema's function
    # -- sequence ---------------------------------------------------------------------------
    live("SELECT nextval('pool_state_seq')", "sequence"),
    live("SELECT setval('pool_state_seq', 10)", "sequence"),
    live("SELECT pg_catalog.nextval('public.pool_state_seq'::regclass)", "sequence"),
    live("INSERT INTO pool_state_t (a) VALUES (nextval('pool_state_seq'))", "sequence"),
    live("WITH n AS (SELECT nextval('pool_state_seq')) SELECT * FROM n", "sequence"),
    live("EXPLAIN ANALYZE SELECT nextval('pool_state_seq')", "sequence"),
    live("CREATE TEMP TABLE pool_state_tmp AS SELECT nextval('pool_state_seq') AS n",
         "temp", "sequence"),
    live("SELECT 1 FROM pool_state_t WHERE a = 0; SELECT setval('pool_state_seq', 5, true)",
         "sequence"),
    # is_called false leaves currval undefined (seen); the analysis does not read arguments
    case("SELECT setval('pool_state_seq', 5, false)", "sequence"),
    case("CREATE VIEW v AS SELECT nextval('s')", "sequence"),  # documented: a definition counts
    case("CREATE TABLE x (id bigint DEFAULT nextval('s'))", "sequence"),
    case("SELECT currval('pool_state_seq'), lastval()"),
    live("SELECT nextval AS n FROM (SELECT 1 AS nextval) AS s"),
    # -- several kinds in one text --------------------------------------------------------
    live("SET work_mem = '1MB'; LISTEN jobs; SELECT nextval('pool_state_seq')",
         "settings", "listen", "sequence", settings=("work_mem",)),
    live("SELECT set_config('work_mem', '1MB', false), pg_advisory_lock(9), "
         "nextval('pool_state_seq')", "settings", "advisory", "sequence",
         settings=("work_mem",)),
    live("CREATE TEMP TABLE pool_state_tmp (a int); PREPARE pool_state_q AS SELECT 1; "
         "SET LOCAL work_mem = '1MB'", "temp", "prepare"),
    # -- unknown ----------------------------------------------------------------------------
    case("DO $$ BEGIN PERFORM set_config('role', 'x', false); END $$", "unknown"),
    case("DO LANGUAGE plpgsql 'BEGIN NULL; END'", "unknown"),
    case("CALL pool_state_p()", "unknown"),
    case("CALL p(nextval('s'))", "unknown", "sequence"),
    case("LOAD 'auto_explain'", "unknown"),
    case("SELECT set_config(name, 'x', false) FROM t", "unknown"),
    case("SELECT set_config($1, 'x', false)", "unknown"),
    case("SELECT set_config('work_mem', '1MB', $1)", "unknown"),
    case("SELECT set_config('work_mem', '1MB', x > 1) FROM t", "unknown"),
    case("SELECT set_config(VARIADIC ARRAY['work_mem', '1MB', 'false'])", "unknown"),
    case("UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem'", "unknown"),
    case("WITH u AS (UPDATE pg_catalog.pg_settings SET setting = '1' WHERE name = $1 "
         "RETURNING 1) SELECT 1", "unknown"),
    # Text that names none of the words a state change needs is not parsed: the
    # server rejects it (nothing created) or runs it (nothing created either).
    case("SELEC 1"),
    case("SELECT 'unterminated"),
    case("SELECT '\ud800'"),  # a lone surrogate: no server would get this text
    case("SELEC 1 -- set role", "unknown"),
    case("SELECT 'unterminated temp", "unknown"),
    case("SELECT '\ud800' AS nextval", "unknown"),
    case(r'SELECT U&"\0073etval"(1)', "sequence"),  # an escaped name goes to the parser
    case("SET ROLE x; SELEC 1", "unknown"),  # one bad statement: the text does not parse
    # -- DISCARD ALL ---------------------------------------------------------------------
    case("DISCARD ALL", discard_all=True),
    case("discard all", discard_all=True),
    case("SET ROLE x; DISCARD ALL", "role", settings=("role",), discard_all=True),
    # -- what pgbench and most applications send --------------------------------------------
    live("SELECT abalance FROM pool_state_t AS pgbench_accounts(abalance) "
         "WHERE abalance = 1"),
    case("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    case("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
    case("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
         "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"),
    case("BEGIN"),
    case("END"),
    case("ROLLBACK"),
    case("SELECT * FROM pg_temp.x"),
    case("SELECT name, setting FROM pg_catalog.pg_settings"),
    case(""),
    case("  ;  ; -- nothing\n"),
]


def test_the_table_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 80
    assert len({c.sql for c in CASES}) == len(CASES), "a statement is listed twice"
    used = set().union(*(c.adds for c in CASES))
    assert used == set(SESSION_STATE_KINDS)
    assert {kind for c in CASES if c.live for kind in c.adds} == (
        set(SESSION_STATE_KINDS) - {"unknown"})


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.sql[:60])
def test_analysis(item: Case) -> None:
    assert analyze_session_state(item.sql) == item.expected
    assert _analyze_text(item.sql) == item.expected  # the uncached path agrees


def test_results_are_cached_by_text() -> None:
    sql = "SELECT pg_advisory_lock(42), 'cached'"
    first = analyze_session_state(sql)
    hits = _analyze.cache_info().hits
    assert analyze_session_state(sql) is first
    assert _analyze.cache_info().hits == hits + 1


def test_long_texts_are_analysed_but_not_cached() -> None:
    sql = "SELECT 1;\n" * (CACHED_TEXT_LIMIT // 10) + "LISTEN long_text"
    assert len(sql) > CACHED_TEXT_LIMIT
    size = _analyze.cache_info().currsize
    misses = _analyze.cache_info().misses
    assert analyze_session_state(sql).adds == {"listen"}
    assert (_analyze.cache_info().currsize, _analyze.cache_info().misses) == (size, misses)


def test_deep_expressions_parse_and_are_searched() -> None:
    # Deeper than json.loads recurses: the analysis falls back to _loads_deep.
    sql = "SELECT " + "1 + " * 3000 + "nextval('s')"
    assert _analyze_text(sql).adds == {"sequence"}
    nested = "SELECT " + "(" * 1500 + "pg_advisory_lock(1)" + ")" * 1500
    assert _analyze_text(nested).adds == {"advisory"}


# -- any text: a StateEffects, never an exception --------------------------------------------


def _check_shape(effects: object) -> None:
    assert isinstance(effects, StateEffects)
    assert effects.adds <= set(SESSION_STATE_KINDS)
    assert all(name == name.lower() for name in effects.settings_changed)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_text_gives_effects(sql: str) -> None:
    _check_shape(analyze_session_state(sql))


_FRAGMENTS = [
    "SET", "LOCAL", "SESSION", "ROLE", "RESET", "ALL", "x", "'v'", "=", "TO", "DEFAULT",
    "SELECT", "set_config(", "nextval(", "pg_advisory_lock(", "pg_catalog.", ")", "(", ",",
    "'role'", "false", "true", "NULL", "$1", "::text", "CREATE", "TEMP", "TABLE", "pg_temp.",
    "AS", "PREPARE", "p", "LISTEN", "DECLARE", "c", "CURSOR", "WITH", "HOLD", "FOR", "DO",
    "$$", "CALL", "LOAD", "DISCARD", "EXPLAIN", "ANALYZE", "INTO", "FROM", "pg_settings",
    "UPDATE", "setting", ";", "--", "/*", "*/", "BEGIN", "COMMIT", "TRANSACTION", "ON",
    "DROP", "FUNCTION", "f()", "RETURNS", "int", "LANGUAGE", "sql", "ATOMIC", "END",
    "VARIADIC", "ARRAY[", "]", "=>", "is_local", '"', "U&", "1",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=25).map(" ".join))
def test_sql_like_text_gives_effects(sql: str) -> None:
    effects = _analyze_text(sql)
    _check_shape(effects)
    assert analyze_session_state(sql) == effects


# -- live: the table against PostgreSQL --------------------------------------------------------

SETUP = f"""
DROP ROLE IF EXISTS {MEMBER};
DROP ROLE IF EXISTS pool_state_alter;
CREATE ROLE {MEMBER} NOLOGIN;
CREATE ROLE pool_state_alter NOLOGIN;
CREATE SEQUENCE IF NOT EXISTS public.pool_state_seq;
CREATE TABLE IF NOT EXISTS public.pool_state_t (a bigint);
GRANT USAGE, SELECT ON SEQUENCE public.pool_state_seq TO {MEMBER};
"""
TEARDOWN = f"""
DROP FUNCTION IF EXISTS public.pool_state_f();
DROP FUNCTION IF EXISTS public.pool_state_g();
DROP PROCEDURE IF EXISTS public.pool_state_p();
DROP TABLE IF EXISTS public.pool_state_t;
DROP SEQUENCE IF EXISTS public.pool_state_seq;
DROP ROLE IF EXISTS {MEMBER};
DROP ROLE IF EXISTS pool_state_alter;
"""

#: One round trip that reads every kind of session state the server can show.
OBSERVE = """
SELECT current_user::text, session_user::text,
       ARRAY(SELECT name FROM pg_settings WHERE source = 'session' ORDER BY name),
       current_setting('myapp.tenant', true),
       (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),
       (SELECT count(*) FROM pg_listening_channels()),
       (SELECT count(*) FROM pg_cursors WHERE is_holdable),
       (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
         + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema())
         + (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()),
       (SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid())
"""


TRANSACTION_SCOPED = frozenset({"transaction_isolation", "transaction_read_only",
                                "transaction_deferrable"})


@dataclass(frozen=True)
class Observed:
    kinds: frozenset[str]
    settings: frozenset[str]


def observe(conn: psycopg.Connection[Any], login: str) -> Observed:
    """The session state that exists on ``conn`` (logged in as ``login``)."""
    row = conn.execute(OBSERVE).fetchone()
    assert row is not None
    (current, session, names, tenant, prepared, channels, cursors, temporary,
     locks) = row
    # SET TRANSACTION marks transaction_isolation/_read_only/_deferrable with source
    # "session", but every transaction starts from the defaults again (checked by
    # test_live_set_transaction_does_not_outlive_the_transaction): no session state.
    found_settings = {name.lower() for name in names} - TRANSACTION_SCOPED
    if tenant is not None:  # custom settings are not in pg_settings
        found_settings.add("myapp.tenant")
    kinds = set()
    if found_settings:
        kinds.add("settings")
    if (current, session) != (login, login):
        kinds.add("role")
    for kind, count in (("prepare", prepared), ("listen", channels), ("cursor", cursors),
                        ("temp", temporary), ("advisory", locks)):
        if count:
            kinds.add(kind)
    try:
        conn.execute("SELECT currval('public.pool_state_seq')")
        kinds.add("sequence")
    except psycopg.errors.ObjectNotInPrerequisiteState:  # 55000: not yet defined
        pass
    return Observed(frozenset(kinds), frozenset(found_settings))


@pytest.fixture(scope="module")
def objects(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    pg_cluster.sql(TEARDOWN)
    pg_cluster.sql(SETUP)
    yield pg_cluster
    pg_cluster.sql(TEARDOWN)


def fresh(pg: PostgresCluster) -> psycopg.Connection[Any]:
    return psycopg.connect(**pg.connect_kwargs(sslmode="disable"), autocommit=True,
                           prepare_threshold=None)


def run(conn: psycopg.Connection[Any], sql: str) -> None:
    """Run ``sql`` as one simple Query (psycopg sends one when there are no
    parameters); COPY ... TO STDOUT goes through psycopg's copy API."""
    if sql.startswith("COPY"):
        with conn.cursor() as cursor, cursor.copy(sql) as copy:
            for _ in copy:
                pass
    else:
        conn.execute(sql)


LIVE = [c for c in CASES if c.live]


@pytest.mark.parametrize("item", LIVE, ids=lambda c: c.sql[:60])
def test_live_state_matches_the_analysis(objects: PostgresCluster, item: Case) -> None:
    effects = analyze_session_state(item.sql)
    with fresh(objects) as conn:
        assert observe(conn, objects.superuser) == Observed(frozenset(), frozenset()), (
            "a fresh session already has state: the observation is wrong")
        run(conn, item.sql)
        found = observe(conn, objects.superuser)
    assert found.kinds == effects.adds
    assert found.settings == effects.settings_changed - {"role", "session_authorization"}


def test_live_discard_all_clears_every_kind(objects: PostgresCluster) -> None:
    statements = [
        f"SET work_mem = '1MB'; SET ROLE {MEMBER}",
        "PREPARE pool_state_q AS SELECT 1",
        "LISTEN jobs",
        "CREATE TEMP TABLE pool_state_tmp (a int)",
        "DECLARE pool_state_c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT pg_advisory_lock(1), nextval('pool_state_seq')",
        f"SET SESSION AUTHORIZATION {MEMBER}",
    ]
    with fresh(objects) as conn:
        built: set[str] = set()
        for sql in statements:
            conn.execute(sql)
            built |= analyze_session_state(sql).adds
        assert observe(conn, objects.superuser).kinds == built == (
            set(SESSION_STATE_KINDS) - {"unknown"})
        assert analyze_session_state("DISCARD ALL").discard_all
        conn.execute("DISCARD ALL")
        assert observe(conn, objects.superuser) == Observed(frozenset(), frozenset())


def test_live_set_transaction_does_not_outlive_the_transaction(
        objects: PostgresCluster) -> None:
    sql = ("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE; "
           "SELECT 1; COMMIT")
    assert analyze_session_state(sql).adds == frozenset()
    read = ("SELECT name, setting FROM pg_settings WHERE name LIKE 'transaction\\_%' "
            "ORDER BY name")
    with fresh(objects) as conn:
        before = conn.execute(read).fetchall()
        conn.execute(sql)
        sources = conn.execute("SELECT name FROM pg_settings WHERE source = 'session'")
        # pg_settings now calls them session settings, but their values are back
        # to the defaults, and the next transaction may write (it is not read only)
        assert {name for (name,) in sources} == TRANSACTION_SCOPED
        assert conn.execute(read).fetchall() == before
        conn.execute("CREATE TEMP TABLE pool_state_rw (a int)")
