"""What :func:`pgwire.roles._sql.analyze` reports for SQL text, without a server.

One large table per kind of statement: every spelling PostgreSQL accepts for a
role change (``SET ROLE``, the generic ``SET role``, quoted and Unicode-escaped
setting names, ``SET SESSION AUTHORIZATION``, ``set_config`` in any expression
and in positional or named notation, ``E''``/``U&''``/dollar-quoted names),
the statements that change roles later or elsewhere (views, rules, defaults,
PREPARE, function definitions), the statements whose effect cannot be seen
(DO, CALL, opaque function bodies), and the look-alikes that must report
nothing (text inside strings, dollar quotes and comments, custom settings
named ``x.role``, ``current_setting('role')``, identifiers named ``role``).

The facts the expectations rest on were checked against PostgreSQL 15 (the
live tests in ``test_guard_live.py`` and ``test_tracker.py`` check them again
through the proxy): ``SET ROLE NONE`` and ``SET ROLE 'none'`` go to the
session user while ``RESET ROLE``, ``SET role TO DEFAULT`` and
``set_config('role', NULL, ...)`` go to the default role; a plain ``EXPLAIN``
and ``CREATE TABLE AS ... WITH NO DATA`` do not run their query.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwire.roles._sql import (
    CACHED_TEXT_LIMIT,
    Analysis,
    RoleAction,
    StatementInfo,
    _analyze,
    analyze,
)

KINDS = frozenset({"set_role", "set_session_authorization", "discard_all",
                   "alter_role_default", "dynamic_set_config", "settings_table", "do_block",
                   "call", "function_definition"})


@dataclass(frozen=True)
class Act:
    """An expected RoleAction: the fields every action is compared on.

    ``detail`` (when given) must start the action's detail: it names what a
    function definition carries (``SET clause``, ``SQL body``, ``opaque``,
    ``no role change``), without tying the test to the rest of the wording.
    """

    kind: str
    target: str | None = None
    reset: bool = False
    local: bool = False
    deferred: bool = False
    none: bool = False
    detail: str | None = None
    parameter: int | None = None


def seen(action: RoleAction, expected: Act) -> Act:
    """The fields of ``action`` that ``expected`` is compared on."""
    return Act(action.kind, action.target, action.reset, action.local, action.deferred,
               action.none,
               None if expected.detail is None
               else action.detail[:len(expected.detail)],
               action.parameter)


def check(sql: str, expected: list[list[Act]]) -> Analysis:
    analysis = analyze(sql)
    assert analysis.error is None, f"{sql!r} did not parse: {analysis.error}"
    assert len(analysis.statements) == len(expected), (sql, analysis.statements)
    for number, (statement, wanted) in enumerate(zip(analysis.statements, expected,
                                                     strict=True), 1):
        got = [seen(action, want) for action, want in zip(statement.actions, wanted,
                                                           strict=False)]
        assert len(statement.actions) == len(wanted), (
            f"statement {number} of {sql!r}: expected {wanted}, got {statement.actions}")
        assert got == wanted, f"statement {number} of {sql!r}: got {statement.actions}"
    return analysis


def role(target: str, **fields: object) -> Act:
    return Act("set_role", target, **fields)  # type: ignore[arg-type]


def set_config_role(target: str | None, **fields: object) -> Act:
    return Act("set_role", target, detail="set_config", **fields)  # type: ignore[arg-type]


RESET_ROLE = Act("set_role", reset=True)
ROLE_NONE = Act("set_role", none=True)


# -- SET / RESET ROLE in every spelling -----------------------------------------------------

SET_ROLE: list[tuple[str, list[Act]]] = [
    ("SET ROLE reader", [role("reader")]),
    ("set role reader", [role("reader")]),
    ("SET ROLE Reader", [role("reader")]),  # an unquoted name folds to lower case
    ('SET ROLE "Reader"', [role("Reader")]),
    ("SET ROLE 'reader'", [role("reader")]),
    ("SET ROLE 'Reader'", [role("Reader")]),
    ("SET role = reader", [role("reader")]),
    ("SET role TO reader", [role("reader")]),
    ("SET ROLE TO 'reader'", [role("reader")]),
    ("SET ROLE $$reader$$", [role("reader")]),
    ("SET ROLE $r$reader$r$", [role("reader")]),
    ('SET "role" = reader', [role("reader")]),
    ('SET "Role" = reader', [role("reader")]),  # GUC names are case-insensitive
    ('SET "ROLE" TO reader', [role("reader")]),
    ('SET U&"r\\006Fle" = reader', [role("reader")]),
    ('SET U&"\\0072\\006F\\006C\\0065" TO reader', [role("reader")]),
    ("SET U&\"r!006Fle\" UESCAPE '!' = reader", [role("reader")]),
    ('SET U&"r\\+00006Fle" = reader', [role("reader")]),
    ("SET SESSION ROLE reader", [role("reader")]),
    ("SET SESSION role = reader", [role("reader")]),
    ("SET LOCAL ROLE reader", [role("reader", local=True)]),
    ("SET LOCAL role TO 'reader'", [role("reader", local=True)]),
    ('SET LOCAL "Role" = reader', [role("reader", local=True)]),
    ("/* leading comment */ SET ROLE reader", [role("reader")]),
    ("-- line comment\nSET ROLE reader", [role("reader")]),
    ("  SET\n\tROLE\n  reader  ;", [role("reader")]),
    # back to the default role
    ("RESET ROLE", [RESET_ROLE]),
    ("reset role", [RESET_ROLE]),
    ('RESET "Role"', [RESET_ROLE]),
    ("SET role TO DEFAULT", [RESET_ROLE]),
    ("SET role = DEFAULT", [RESET_ROLE]),
    ("SET LOCAL role TO DEFAULT", [Act("set_role", reset=True, local=True)]),
    ("SET SESSION role TO DEFAULT", [RESET_ROLE]),
    # to the session user
    ("SET ROLE NONE", [ROLE_NONE]),
    ("set role none", [ROLE_NONE]),
    ("SET ROLE 'none'", [ROLE_NONE]),
    ('SET ROLE "none"', [ROLE_NONE]),
    ("SET role = none", [ROLE_NONE]),
    ("SET LOCAL ROLE NONE", [Act("set_role", none=True, local=True)]),
    # 'NONE' in quotes is a role name (PostgreSQL: role "NONE" does not exist)
    ("SET ROLE 'NONE'", [role("NONE")]),
    ('SET ROLE "NONE"', [role("NONE")]),
]

SESSION_AUTHORIZATION: list[tuple[str, list[Act]]] = [
    ("SET SESSION AUTHORIZATION reader", [Act("set_session_authorization", "reader")]),
    ("SET SESSION AUTHORIZATION 'reader'", [Act("set_session_authorization", "reader")]),
    ('SET SESSION AUTHORIZATION "Reader"', [Act("set_session_authorization", "Reader")]),
    ("SET LOCAL SESSION AUTHORIZATION reader",
     [Act("set_session_authorization", "reader", local=True)]),
    ("SET session_authorization = reader", [Act("set_session_authorization", "reader")]),
    ('SET "SESSION_AUTHORIZATION" TO reader', [Act("set_session_authorization", "reader")]),
    ("SET SESSION AUTHORIZATION DEFAULT", [Act("set_session_authorization", reset=True)]),
    ("RESET SESSION AUTHORIZATION", [Act("set_session_authorization", reset=True)]),
    ("RESET session_authorization", [Act("set_session_authorization", reset=True)]),
]


# -- set_config, anywhere, in any notation --------------------------------------------------

SET_CONFIG_SPELLINGS: list[tuple[str, list[Act]]] = [
    ("SELECT set_config('role', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config('role', 'reader', true)", [set_config_role("reader", local=True)]),
    ("SELECT set_config('role', 'reader', 't')", [set_config_role("reader", local=True)]),
    ("SELECT set_config('role', 'reader', 'off')", [set_config_role("reader")]),
    ("SELECT set_config('ROLE', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config('Role', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config('role', 'Reader', false)", [set_config_role("Reader")]),
    ("SELECT set_config('session_authorization', 'reader', false)",
     [Act("set_session_authorization", "reader", detail="set_config")]),
    ("SELECT set_config('role', NULL, false)", [set_config_role(None, reset=True)]),
    ("SELECT set_config('role', 'none', false)", [set_config_role(None, none=True)]),
    ("SELECT pg_catalog.set_config('role', 'reader', false)", [set_config_role("reader")]),
    ('SELECT "set_config"(\'role\', \'reader\', false)', [set_config_role("reader")]),
    ("SELECT PG_CATALOG.SET_CONFIG('role', 'reader', false)", [set_config_role("reader")]),
    ('SELECT "pg_catalog"."set_config"(\'role\', \'reader\', false)',
     [set_config_role("reader")]),
    # escapes and other quotes for the setting name and the value
    ("SELECT set_config(E'r\\x6fle', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config(E'\\162ole', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config(e'ro\\u006ce', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config('role', E'read\\x65r', false)", [set_config_role("reader")]),
    ("SELECT set_config(U&'r\\006Fle', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config(U&'r!006Fle' UESCAPE '!', 'reader', false)",
     [set_config_role("reader")]),
    ("SELECT set_config($$role$$, 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config($q$ROLE$q$, 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config('role', $$reader$$, false)", [set_config_role("reader")]),
    ("SELECT set_config('ro'\n'le', 'reader', false)", [set_config_role("reader")]),
    ("SELECT set_config(setting_name := 'role', new_value := 'reader', is_local := false)",
     [set_config_role("reader")]),
    ("SELECT set_config('role', new_value => 'reader', is_local => false)",
     [set_config_role("reader")]),
    ("SELECT set_config('role', 'reader', is_local => true)",
     [set_config_role("reader", local=True)]),
    # a name that is not a literal may be 'role'
    ("SELECT set_config(lower('ROLE'), 'reader', false)", [Act("dynamic_set_config")]),
    ("SELECT set_config('ro' || 'le', 'reader', false)", [Act("dynamic_set_config")]),
    ("SELECT set_config($1, 'reader', false)", [Act("dynamic_set_config")]),
    ("SELECT set_config('role'::text, 'reader', false)", [Act("dynamic_set_config")]),
    ("SELECT set_config(name, 'reader', false) FROM pg_settings",
     [Act("dynamic_set_config")]),
    ("SELECT set_config(VARIADIC ARRAY['role', 'reader', 'false'])",
     [Act("dynamic_set_config")]),
    ("SELECT set_config(new_value => 'reader', setting_name => current_user, "
     "is_local => false)", [Act("dynamic_set_config")]),
    # a value that is not a literal: the target is unknown
    ("SELECT set_config('role', lower('READER'), false)", [Act("set_role")]),
    ("SELECT set_config('role', 'rea' || 'der', false)", [Act("set_role")]),
    ("SELECT set_config('role', $1, false)", [Act("set_role", parameter=1)]),
    ("SELECT set_config('role', $2, $1)", [Act("set_role", parameter=2)]),
    ("SELECT set_config('session_authorization', $1, false)",
     [Act("set_session_authorization", parameter=1)]),
]

# Named notation in every order: PostgreSQL matches the names, not the positions.
# (PostgreSQL 15's catalog gives set_config no argument names, so there such a
# call fails with 42883; the analysis reports it all the same, as a server
# that names them, or a function of the same name, would run it.)
NAMED_ORDERS: list[tuple[str, list[Act]]] = []
for order in itertools.permutations((("setting_name", "'role'"), ("new_value", "'reader'"),
                                     ("is_local", "true"))):
    arguments = ", ".join(f"{name} => {value}" for name, value in order)
    NAMED_ORDERS.append((f"SELECT set_config({arguments})",
                         [set_config_role("reader", local=True)]))

SET_CONFIG = "set_config('role', 'reader', false)"

# Where a set_config call sits: each of these runs it when the statement runs.
RUNS_NOW: list[str] = [
    f"SELECT {SET_CONFIG}",
    f"SELECT 1, {SET_CONFIG} AS r",
    f"WITH x AS (SELECT {SET_CONFIG}) SELECT * FROM x",
    f"WITH RECURSIVE x(n) AS (SELECT {SET_CONFIG}) SELECT * FROM x",
    f"SELECT * FROM (SELECT {SET_CONFIG}) AS s",
    f"SELECT (SELECT {SET_CONFIG})",
    f"SELECT 1 FROM pg_class WHERE {SET_CONFIG} IS NOT NULL",
    f"SELECT 1 WHERE EXISTS (SELECT {SET_CONFIG})",
    f"SELECT CASE WHEN true THEN {SET_CONFIG} END",
    f"SELECT upper({SET_CONFIG})",
    f"SELECT coalesce(NULL, {SET_CONFIG})",
    f"SELECT count(*) FILTER (WHERE {SET_CONFIG} = '') FROM pg_class",
    f"SELECT 1 ORDER BY {SET_CONFIG}",
    f"SELECT 1 GROUP BY {SET_CONFIG}",
    f"SELECT 1 UNION SELECT length({SET_CONFIG})",
    f"SELECT * FROM pg_class LIMIT length({SET_CONFIG})",
    f"SELECT * FROM generate_series(1, length({SET_CONFIG}))",
    f"SELECT * FROM pg_class c JOIN pg_namespace n ON {SET_CONFIG} IS NOT NULL",
    f"VALUES ({SET_CONFIG})",
    f"VALUES (1), (length({SET_CONFIG}))",
    f"INSERT INTO t VALUES ({SET_CONFIG})",
    f"INSERT INTO t SELECT {SET_CONFIG}",
    f"INSERT INTO t VALUES (1) RETURNING {SET_CONFIG}",
    f"INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = {SET_CONFIG}",
    f"UPDATE t SET a = {SET_CONFIG}",
    f"UPDATE t SET a = 1 WHERE {SET_CONFIG} IS NULL",
    f"DELETE FROM t WHERE {SET_CONFIG} IS NULL",
    f"DELETE FROM t RETURNING {SET_CONFIG}",
    f"MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET a = {SET_CONFIG}",
    f"WITH x AS (INSERT INTO t VALUES (1) RETURNING {SET_CONFIG}) SELECT * FROM x",
    f"COPY (SELECT {SET_CONFIG}) TO STDOUT",
    f"COPY (SELECT {SET_CONFIG}) TO STDOUT WITH (FORMAT csv)",
    f"EXPLAIN ANALYZE SELECT {SET_CONFIG}",
    f"EXPLAIN (ANALYZE) SELECT {SET_CONFIG}",
    f"EXPLAIN (ANALYZE true, BUFFERS) SELECT {SET_CONFIG}",
    f"EXPLAIN (ANALYZE, FORMAT json) INSERT INTO t VALUES ({SET_CONFIG})",
    f"CREATE TABLE t2 AS SELECT {SET_CONFIG}",
    f"CREATE TEMP TABLE t2 AS SELECT {SET_CONFIG}",
    f"CREATE TABLE IF NOT EXISTS t2 AS SELECT {SET_CONFIG}",
    f"CREATE MATERIALIZED VIEW mv AS SELECT {SET_CONFIG}",
    f"SELECT {SET_CONFIG} INTO TEMP t2",
    f"SELECT {SET_CONFIG} FOR UPDATE",
]

# ...and each of these keeps it for later (or never): a view, a rule, a default,
# a prepared statement, a cursor, a policy, a plain EXPLAIN, WITH NO DATA.
RUNS_LATER: list[str] = [
    f"PREPARE p AS SELECT {SET_CONFIG}",
    f"PREPARE p (text) AS SELECT {SET_CONFIG}, $1",
    f"CREATE VIEW v AS SELECT {SET_CONFIG}",
    f"CREATE OR REPLACE TEMP VIEW v AS SELECT {SET_CONFIG}",
    f"CREATE RULE r AS ON INSERT TO t DO ALSO SELECT {SET_CONFIG}",
    f"CREATE RULE r AS ON UPDATE TO t DO INSTEAD SELECT {SET_CONFIG}",
    f"CREATE TABLE t3 (a text DEFAULT {SET_CONFIG})",
    f"CREATE TEMP TABLE t3 (a text, CHECK ({SET_CONFIG} IS NOT NULL))",
    f"ALTER TABLE t ALTER COLUMN a SET DEFAULT {SET_CONFIG}",
    f"ALTER TABLE t ADD COLUMN c text DEFAULT {SET_CONFIG}",
    f"CREATE DOMAIN d AS text DEFAULT {SET_CONFIG}",
    f"CREATE POLICY p ON t USING ({SET_CONFIG} IS NOT NULL)",
    f"DECLARE c CURSOR FOR SELECT {SET_CONFIG}",
    f"EXPLAIN SELECT {SET_CONFIG}",
    f"EXPLAIN (ANALYZE false) SELECT {SET_CONFIG}",
    f"EXPLAIN (ANALYZE off, VERBOSE) SELECT {SET_CONFIG}",
    f"EXPLAIN (FORMAT json) SELECT {SET_CONFIG}",
    f"CREATE TABLE t2 AS SELECT {SET_CONFIG} WITH NO DATA",
    f"CREATE MATERIALIZED VIEW mv AS SELECT {SET_CONFIG} WITH NO DATA",
]


# -- defaults of future sessions, discards, opaque code, pg_settings -------------------------

ALTER_DEFAULTS: list[tuple[str, list[Act]]] = [
    ("ALTER ROLE app SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE app SET role TO 'reader'", [Act("alter_role_default", "reader")]),
    ('ALTER ROLE app SET "Role" = reader', [Act("alter_role_default", "reader")]),
    ("ALTER USER app SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE app IN DATABASE db SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE ALL SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE ALL IN DATABASE db SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE CURRENT_USER SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER ROLE app SET session_authorization = reader",
     [Act("alter_role_default", "reader")]),
    ("ALTER ROLE app SET role FROM CURRENT", [Act("alter_role_default")]),
    ("ALTER ROLE app SET role TO DEFAULT", [Act("alter_role_default")]),
    ("ALTER ROLE app RESET role", [Act("alter_role_default")]),
    ("ALTER USER app IN DATABASE db RESET role", [Act("alter_role_default")]),
    ("ALTER ROLE app RESET ALL", [Act("alter_role_default")]),
    ("ALTER DATABASE db SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER DATABASE db SET role TO DEFAULT", [Act("alter_role_default")]),
    ("ALTER DATABASE db RESET role", [Act("alter_role_default")]),
    ("ALTER DATABASE db RESET ALL", [Act("alter_role_default")]),
    ("ALTER SYSTEM SET role = reader", [Act("alter_role_default", "reader")]),
    ("ALTER SYSTEM SET role TO DEFAULT", [Act("alter_role_default")]),
    ("ALTER SYSTEM RESET role", [Act("alter_role_default")]),
    ("ALTER SYSTEM RESET ALL", [Act("alter_role_default")]),
]

OTHER_ACTIONS: list[tuple[str, list[Act]]] = [
    ("DISCARD ALL", [Act("discard_all", reset=True)]),
    ("discard all", [Act("discard_all", reset=True)]),
    ("DO $$BEGIN PERFORM set_config('role', 'reader', false); END$$", [Act("do_block")]),
    ("DO LANGUAGE plpgsql $$BEGIN NULL; END$$", [Act("do_block")]),
    ("DO $$ $$", [Act("do_block")]),
    ("DO 'BEGIN EXECUTE ''SET ROLE reader''; END'", [Act("do_block")]),
    ("CALL p()", [Act("call", detail="p")]),
    ("CALL app_schema.become(1, 'x')", [Act("call", detail="become")]),
    ("call pg_temp.p()", [Act("call", detail="p")]),
    ("UPDATE pg_settings SET setting = 'reader' WHERE name = 'role'",
     [Act("settings_table")]),
    ("UPDATE pg_catalog.pg_settings SET setting = 'reader' WHERE name = 'role'",
     [Act("settings_table")]),
    ("UPDATE pg_settings AS s SET setting = 'reader' WHERE s.name = 'role'",
     [Act("settings_table")]),
    ("INSERT INTO pg_settings (name, setting) VALUES ('role', 'reader')",
     [Act("settings_table")]),
    ("DELETE FROM pg_settings WHERE name = 'role'", [Act("settings_table")]),
    ("WITH u AS (UPDATE pg_settings SET setting = 'reader' WHERE name = 'role') SELECT 1",
     [Act("settings_table")]),
]

FUNCTIONS: list[tuple[str, list[Act]]] = [
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = reader AS 'SELECT 1'",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET \"Role\" TO 'reader' AS 'SELECT 1'",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role FROM CURRENT AS 'SELECT 1'",
     [Act("function_definition", deferred=True, detail="SET clause")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql SET role = reader "
     "AS $$BEGIN RETURN 1; END$$",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("CREATE PROCEDURE p() LANGUAGE sql SET role = reader AS 'SELECT 1'",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql "
     "SET session_authorization = reader AS 'SELECT 1'",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("ALTER FUNCTION f() SET role = reader",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("ALTER PROCEDURE p() SET role TO reader",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    ("ALTER ROUTINE f() SET role = reader",
     [Act("function_definition", "reader", deferred=True, detail="SET clause")]),
    # SQL bodies, as a string and BEGIN ATOMIC / RETURN
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "AS $$SELECT set_config('role', 'reader', false)$$",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE OR REPLACE FUNCTION f() RETURNS text "
     "AS $$SELECT set_config('role', 'reader', false)$$ LANGUAGE SQL",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "AS 'SELECT set_config(''role'', ''reader'', false)'",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT 1; SET ROLE reader$$",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$SET ROLE reader$$",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "BEGIN ATOMIC SELECT set_config('role', 'reader', false); END",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE PROCEDURE p() LANGUAGE sql "
     "BEGIN ATOMIC SELECT 1; SELECT set_config('role', 'reader', false); END",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE FUNCTION f() RETURNS text RETURN set_config('role', 'reader', false)",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "AS $$SELECT set_config('session_authorization', 'reader', false)$$",
     [Act("function_definition", "reader", deferred=True, detail="SQL body")]),
    # bodies that change nothing
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     [Act("function_definition", deferred=True, detail="no role change")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
     [Act("function_definition", deferred=True, detail="no role change")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT 'SET ROLE reader'$$",
     [Act("function_definition", deferred=True, detail="no role change")]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql "
     "AS $$SELECT current_setting('role')$$",
     [Act("function_definition", deferred=True, detail="no role change")]),
    ("ALTER FUNCTION f() SET work_mem = '1MB'",
     [Act("function_definition", deferred=True, detail="no role change")]),
    # opaque bodies: the guard cannot read them
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql "
     "AS $$BEGIN PERFORM set_config('role', 'reader', false); END$$",
     [Act("function_definition", deferred=True, detail="opaque")]),
    ("CREATE FUNCTION f() RETURNS void AS $$BEGIN NULL; END$$ LANGUAGE plpgsql",
     [Act("function_definition", deferred=True, detail="opaque")]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'symbol'",
     [Act("function_definition", deferred=True, detail="opaque")]),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN EXECUTE 'SET ROLE reader'; END$$",
     [Act("function_definition", deferred=True, detail="opaque")]),
]


# -- look-alikes: nothing here touches a role ----------------------------------------------

LOOK_ALIKES: list[str] = [
    "SELECT $$SET ROLE reader$$",
    "SELECT $x$ SET ROLE reader; $x$",
    "SELECT $a$ $$ ; SET ROLE reader; $$ $a$",
    "SELECT $$ $x$ $$, $x$ ; SET ROLE reader; $x$",
    "SELECT $$set_config('role', 'reader', false)$$",
    "SELECT 1 /* SET ROLE reader */",
    "SELECT 1 /* a /* SET ROLE reader; */ SET ROLE reader; */",
    "SELECT 1 /* /* /* deep */ */ ; SET ROLE reader */",
    "SELECT 1 -- ; SET ROLE reader",
    "SELECT 'SET ROLE reader'",
    "SELECT 'x''; SET ROLE reader; --'",
    "SELECT E'\\'; SET ROLE reader; --'",
    "SELECT E'\\\\'' ; SET ROLE reader; --'",
    "SELECT U&'\\0027; SET ROLE reader; --'",
    "SELECT 'set_config(''role'', ''reader'', false)'",
    "SELECT \"SET ROLE reader\" FROM t",
    "SET x.role = 'reader'",
    "SET my.role TO reader",
    "SET LOCAL app.role = 'reader'",
    "RESET x.role",
    'SET "x.role" = reader',
    "SHOW role",
    "SHOW session_authorization",
    "SELECT current_setting('role')",
    "SELECT current_setting('role', true)",
    "SELECT current_user, session_user, current_role",
    "SELECT set_config('x.role', 'reader', false)",
    "SELECT set_config('application_name', 'SET ROLE reader', false)",
    "SELECT set_config('search_path', 'role', false)",
    "SELECT my_set_config('role', 'reader', false)",
    "SELECT role FROM t",
    "SELECT t.role, t.\"role\" FROM t",
    "SELECT role FROM (VALUES ('reader')) AS t(role)",
    "CREATE TABLE role (role text)",
    "INSERT INTO role (role) VALUES ('reader')",
    "UPDATE role SET role = 'reader'",
    "UPDATE t SET role = 'reader' WHERE role = 'x'",
    "SELECT * FROM pg_settings WHERE name = 'role'",
    "SELECT rolname FROM pg_roles WHERE rolname = 'reader'",
    "SELECT pg_has_role('reader', 'MEMBER')",
    "CREATE ROLE reader",
    "CREATE ROLE reader IN ROLE app",
    "DROP ROLE IF EXISTS reader",
    "GRANT reader TO app",
    "REVOKE reader FROM app",
    "ALTER ROLE reader RENAME TO writer",
    "ALTER ROLE app WITH NOSUPERUSER",
    "ALTER ROLE app SET work_mem = '1MB'",
    "ALTER ROLE app SET x.role = 'reader'",
    "ALTER DATABASE db SET search_path = role",
    "COMMENT ON ROLE reader IS 'SET ROLE reader'",
    "SET search_path = role",
    "SET application_name = 'role'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET TIME ZONE 'UTC'",
    "SET LOCAL statement_timeout = 0",
    "RESET ALL",
    "RESET search_path",
    "SET role FROM CURRENT",  # keeps the value the session has
    "DISCARD PLANS",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
    "LISTEN role",
    "NOTIFY role, 'SET ROLE reader'",
    "SELECT 'DO $$ $$'",
    "EXPLAIN SELECT 1",
    "COPY t FROM STDIN",
    "EXECUTE p",
    "DEALLOCATE ALL",
    "PREPARE p AS SELECT 1",
    "SELECT 1",
]


# -- several statements in one string ------------------------------------------------------

MULTI: list[tuple[str, list[list[Act]]]] = [
    ("SELECT 1; SET ROLE reader; SELECT 2", [[], [role("reader")], []]),
    ("SET ROLE reader; SET ROLE writer", [[role("reader")], [role("writer")]]),
    ("BEGIN; SET LOCAL ROLE reader; COMMIT", [[], [role("reader", local=True)], []]),
    ("SET ROLE reader; RESET ROLE; SET ROLE NONE; DISCARD ALL",
     [[role("reader")], [RESET_ROLE], [ROLE_NONE], [Act("discard_all", reset=True)]]),
    ("SELECT 'a;b'; SET ROLE reader", [[], [role("reader")]]),
    ("SELECT $$;$$; SET ROLE reader;;", [[], [role("reader")]]),
    ("SELECT 1 /* ; SET ROLE x; */; SET ROLE reader", [[], [role("reader")]]),
    # with standard_conforming_strings on (the default), a backslash ends nothing
    ("SELECT 'a\\'; SET ROLE reader; --'", [[], [role("reader")]]),
    (f"SET ROLE reader; SELECT {SET_CONFIG}; "
     "SELECT set_config('session_authorization', 'admin', false)",
     [[role("reader")], [set_config_role("reader")],
      [Act("set_session_authorization", "admin", detail="set_config")]]),
    ("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SET ROLE reader$$; SELECT f()",
     [[Act("function_definition", "reader", deferred=True, detail="SQL body")], []]),
    (f"PREPARE p AS SELECT {SET_CONFIG}; EXECUTE p",
     [[set_config_role("reader", deferred=True)], []]),
    ("SELECT 1; DO $$ $$; CALL p(); ALTER ROLE app SET role = reader",
     [[], [Act("do_block")], [Act("call", detail="p")], [Act("alter_role_default", "reader")]]),
]

UNPARSEABLE: list[str] = [
    "SELEC 1",
    "SET ROLE",
    "SET ROLE reader writer",
    "SET ROLE reader, writer",
    "SELECT 'unterminated",
    "SELECT $$unterminated",
    "SELECT 1 /* unterminated",
    "SELECT 1 /* nested /* only once closed */",
    "SET ROLE reader; SELEC 1",
]


@pytest.mark.parametrize(("sql", "expected"), SET_ROLE + SESSION_AUTHORIZATION
                         + SET_CONFIG_SPELLINGS + NAMED_ORDERS + ALTER_DEFAULTS
                         + OTHER_ACTIONS + FUNCTIONS,
                         ids=lambda value: value if isinstance(value, str) else "")
def test_one_statement(sql: str, expected: list[Act]) -> None:
    check(sql, [expected])


@pytest.mark.parametrize("sql", RUNS_NOW)
def test_set_config_that_runs_with_the_statement(sql: str) -> None:
    check(sql, [[set_config_role("reader")]])


@pytest.mark.parametrize("sql", RUNS_LATER)
def test_set_config_kept_for_later_is_deferred(sql: str) -> None:
    analysis = check(sql, [[set_config_role("reader", deferred=True)]])
    assert not any(action.changes_role_now for action in analysis.actions)


@pytest.mark.parametrize("sql", LOOK_ALIKES)
def test_look_alikes_touch_no_role(sql: str) -> None:
    analysis = analyze(sql)
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1, analysis.statements
    assert analysis.statements[0].actions == ()
    assert not analysis.touches_roles


@pytest.mark.parametrize(("sql", "expected"), MULTI)
def test_every_statement_of_a_string(sql: str, expected: list[list[Act]]) -> None:
    check(sql, expected)


@pytest.mark.parametrize("sql", UNPARSEABLE)
def test_unparseable_text_is_an_error(sql: str) -> None:
    analysis = analyze(sql)
    assert analysis.error
    assert analysis.statements == ()
    assert not analysis.touches_roles


@pytest.mark.parametrize("sql", ["", " ", ";", ";;", "-- only a comment", "/* c */",
                                 "\n\t "])
def test_empty_text_has_no_statements(sql: str) -> None:
    assert analyze(sql) == Analysis()


def test_changes_role_now_separates_direct_changes() -> None:
    direct = check("SET ROLE reader; SELECT set_config('role', 'writer', true); "
                   "DISCARD ALL; RESET ROLE",
                   [[role("reader")], [set_config_role("writer", local=True)],
                    [Act("discard_all", reset=True)], [RESET_ROLE]])
    assert all(action.changes_role_now for action in direct.actions)
    later = check("CREATE VIEW v AS SELECT set_config('role', 'reader', false); DO $$ $$; "
                  "ALTER ROLE app SET role = reader",
                  [[set_config_role("reader", deferred=True)], [Act("do_block")],
                   [Act("alter_role_default", "reader")]])
    assert not any(action.changes_role_now for action in later.actions)


# -- transaction control, prepared statements, lexing ---------------------------------------

TRANSACTIONS: list[tuple[str, str | None, str | None]] = [
    ("BEGIN", "begin", None),
    ("BEGIN WORK", "begin", None),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY", "begin", None),
    ("START TRANSACTION", "begin", None),
    ("COMMIT", "commit", None),
    ("END", "commit", None),
    ("COMMIT WORK", "commit", None),
    ("COMMIT AND CHAIN", "commit", None),
    ("ROLLBACK", "rollback", None),
    ("ABORT", "rollback", None),
    ("ROLLBACK AND CHAIN", "rollback", None),
    ("SAVEPOINT s", "savepoint", "s"),
    ("SAVEPOINT S", "savepoint", "s"),
    ('SAVEPOINT "S"', "savepoint", "S"),
    ("RELEASE SAVEPOINT s", "release", "s"),
    ("RELEASE s", "release", "s"),
    ("ROLLBACK TO SAVEPOINT s", "rollback_to", "s"),
    ("ROLLBACK TO s", "rollback_to", "s"),
    ("ROLLBACK WORK TO SAVEPOINT s", "rollback_to", "s"),
    ("PREPARE TRANSACTION 'x'", "prepare", None),
    ("COMMIT PREPARED 'x'", "commit_prepared", None),
    ("ROLLBACK PREPARED 'x'", "rollback_prepared", None),
    ("SELECT 1", None, None),
    ("SHOW role", None, None),
]


@pytest.mark.parametrize(("sql", "transaction", "savepoint"), TRANSACTIONS)
def test_transaction_control(sql: str, transaction: str | None, savepoint: str | None) -> None:
    [statement] = analyze(sql).statements
    assert (statement.transaction, statement.savepoint) == (transaction, savepoint)
    assert statement.actions == ()


@pytest.mark.parametrize(("sql", "prepared"), [
    ("PREPARE p AS SELECT 1", "p"),
    ("PREPARE P (int) AS SELECT $1", "p"),
    ('PREPARE "P" AS SELECT 1', "P"),
    ("EXECUTE p", "p"),
    ("EXECUTE p (1, 'x')", "p"),
    ("DEALLOCATE p", "p"),
    ("DEALLOCATE PREPARE p", "p"),
    ("DEALLOCATE ALL", None),
    ("SELECT 1", None),
    ("CREATE VIEW p AS SELECT 1", None),
])
def test_prepared_statement_names(sql: str, prepared: str | None) -> None:
    [statement] = analyze(sql).statements
    assert statement.prepared == prepared


@pytest.mark.parametrize(("sql", "lexing"), [
    ("SET standard_conforming_strings = off", True),
    ("SET standard_conforming_strings TO on", True),
    ("SET LOCAL standard_conforming_strings = off", True),
    ('SET "Standard_Conforming_Strings" = off', True),
    ("RESET standard_conforming_strings", True),
    ("SET client_encoding = 'SJIS'", True),
    ("SET NAMES 'SJIS'", True),
    ("RESET client_encoding", True),
    ("RESET ALL", True),
    ("DISCARD ALL", True),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", True),
    ("SELECT set_config('client_encoding', 'BIG5', false)", True),
    ("SELECT set_config(lower('X'), 'off', false)", True),
    ("SELECT 1; SET standard_conforming_strings = off", True),
    ("SET escape_string_warning = off", False),
    ("SET ROLE reader", False),
    ("SELECT 1", False),
    ("ALTER ROLE app SET standard_conforming_strings = off", False),
    ("SELECT 'SET standard_conforming_strings = off'", False),
])
def test_statements_that_change_lexing(sql: str, lexing: bool) -> None:
    assert analyze(sql).changes_lexing is lexing


# -- properties ----------------------------------------------------------------------------

FRAGMENTS = ["SET", "ROLE", "role", "RESET", "LOCAL", "SESSION", "AUTHORIZATION", "NONE",
             "DEFAULT", "TO", "=", "reader", '"Role"', "U&\"r\\006Fle\"", "'", "''", '"',
             "$$", "$q$", "/*", "*/", "--", "\n", ";", " ", "(", ")", ",", "E'", "\\",
             "set_config", "pg_catalog.", "SELECT", "WITH", "DO", "CALL", "BEGIN", "COMMIT",
             "ROLLBACK", "SAVEPOINT", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS",
             "ALTER ROLE app", "DISCARD ALL", "=>", "null", "true", "1", "x.role"]

sql_like = st.lists(st.sampled_from(FRAGMENTS), max_size=24).map("".join)
any_text = st.text(max_size=200)


def _well_formed(analysis: Analysis) -> None:
    assert isinstance(analysis, Analysis)
    if analysis.error is not None:
        assert isinstance(analysis.error, str) and analysis.error
        assert analysis.statements == ()
    for statement in analysis.statements:
        assert isinstance(statement, StatementInfo)
        for action in statement.actions:
            assert action.kind in KINDS, action
            assert action.target is None or isinstance(action.target, str)
            assert not (action.reset and action.target is not None), action
            assert not (action.none and action.target is not None), action


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, sql_like))
def test_any_text_gives_an_analysis_and_never_raises(sql: str) -> None:
    first = analyze(sql)
    _well_formed(first)
    assert analyze(sql) == first


@settings(max_examples=100, deadline=None)
@given(st.one_of(any_text, sql_like))
def test_analysis_does_not_depend_on_the_cache(sql: str) -> None:
    from pgwire.roles import _sql  # noqa: PLC0415 - reaching the private cache on purpose

    cached = analyze(sql)
    _sql._analyze.cache_clear()
    assert analyze(sql) == cached


@settings(max_examples=200, deadline=None)
@given(st.one_of(any_text, sql_like))
def test_text_inside_dollar_quotes_touches_no_role(text: str) -> None:
    if "$x$" in text or "\x00" in text:
        return
    analysis = analyze(f"SELECT $x${text}$x$")
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1
    assert not analysis.touches_roles


@settings(max_examples=200, deadline=None)
@given(st.one_of(any_text, sql_like))
def test_text_inside_a_comment_touches_no_role(text: str) -> None:
    if "*/" in text or "/*" in text or "\x00" in text:
        return
    analysis = analyze(f"SELECT 1 /* {text} */")
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1
    assert not analysis.touches_roles


@settings(max_examples=200, deadline=None)
@given(st.one_of(any_text, sql_like))
def test_text_inside_a_string_touches_no_role(text: str) -> None:
    if "\x00" in text:
        return
    quoted = "'" + text.replace("'", "''") + "'"
    analysis = analyze(f"SELECT {quoted}")
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1
    assert not analysis.touches_roles


def test_long_texts_are_analysed_but_never_kept() -> None:
    """The cache holds its keys: a text past CACHED_TEXT_LIMIT is analysed every
    time, so many distinct long texts cannot fill memory."""
    padding = "x" * CACHED_TEXT_LIMIT
    before = _analyze.cache_info().currsize
    long_text = f"SELECT set_config('role', 'r', false), '{padding}'"
    assert [a.target for a in analyze(long_text).actions] == ["r"]
    assert _analyze.cache_info().currsize == before
    analyze("SELECT 'short and new text for the cache'")
    assert _analyze.cache_info().currsize == before + 1
