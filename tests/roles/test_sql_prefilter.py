"""The two shortcuts in front of the SQL analysis give what the full analysis gives.

- ``_analyze_text`` reads libpg_query's JSON text and, when every statement
  is plain (``_plain_statements``), skips decoding it: the result must equal
  the decoded and walked tree's (``_decoded``), field for field.
- ``analyze_roles`` (what a role tracker uses) skips the parser for text
  without any of ``ROLE_WORDS``: for such text the full analysis must hold
  nothing a tracker reads (no action, no transaction control, no prepared
  statement or cursor name, no node a tracker looks at), or be a parse error.

Checked on every statement of the analysis, pool and guard tables, on
generated SQL-like text built from fragments chosen to evade the word test
(comments, quoting, escapes, dollar quotes, case), and on arbitrary text.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pgwire.roles._sql import (
    ROLE_WORDS,
    Analysis,
    _analyze_text,
    _decoded,
    _parser,
    _plain_statements,
    analyze,
    analyze_roles,
    mentions_role_words,
)
from tests.pool.test_analysis import CASES as POOL_CASES
from tests.roles import test_guard_live as guard_live
from tests.roles import test_sql_analysis as analysis_table

pytest.importorskip("pglast")

#: Nodes whose type alone means something to the tracker.
TRACKED_NODES = frozenset({"PrepareStmt", "ExecuteStmt", "DeallocateStmt",
                           "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt"})
PGBENCH = "SELECT abalance FROM pgbench_accounts WHERE aid = 31337;"


def full(sql: str) -> Analysis:
    """The analysis without either shortcut: parse, decode, walk."""
    parser = _parser()
    try:
        text = parser.parse_sql_json(sql)
    except parser.ParseError as exc:
        return Analysis(error=str(exc))
    except UnicodeError as exc:
        return Analysis(error=f"the text is not valid Unicode: {exc}")
    return _decoded(text)


def nothing_tracked(analysis: Analysis) -> bool:
    return all(not (statement.actions or statement.transaction or statement.savepoint
                    or statement.prepared is not None or statement.node in TRACKED_NODES)
               for statement in analysis.statements)


def check(sql: str) -> None:
    expected = full(sql)
    assert _analyze_text(sql) == expected, sql
    if not mentions_role_words(sql):
        assert nothing_tracked(expected), (sql, expected)
        assert analyze_roles(sql) == Analysis()
        assert analyze_roles(sql, check_syntax=True) == Analysis(error=expected.error)
    elif sql:
        assert analyze_roles(sql) == expected
        assert analyze_roles(sql, check_syntax=True) == expected


def _table() -> list[str]:
    texts: list[str] = [PGBENCH]
    for name in ("SET_ROLE", "SESSION_AUTHORIZATION", "SET_CONFIG_SPELLINGS", "NAMED_ORDERS",
                 "ALTER_DEFAULTS", "OTHER_ACTIONS", "FUNCTIONS", "MULTI"):
        texts += [sql for sql, _ in getattr(analysis_table, name)]
    texts += analysis_table.RUNS_NOW + analysis_table.RUNS_LATER
    texts += analysis_table.LOOK_ALIKES + analysis_table.UNPARSEABLE
    texts += [sql for sql, _, _ in analysis_table.TRANSACTIONS]
    texts += [case.sql for case in POOL_CASES]
    texts += [case.sql for case in guard_live.CASES]
    texts += [step.sql for steps in guard_live.SCENARIOS.values() for step in steps
              if isinstance(getattr(step, "sql", None), str)]
    texts += [  # the guard fuzz corpus
        "SET ROLE readers", "SET ROLE admins", "RESET ROLE", "SET ROLE NONE",
        "SELECT set_config('role', 'admins', false)", "SELECT set_config($1, 'x', false)",
        "DISCARD ALL", "DO $$BEGIN END$$", "BEGIN", "COMMIT", "ROLLBACK",
        "SELECT 'a\\', ' AS b", "SELECT 1; SET ROLE admins", "selec", "",
    ]
    return texts


TABLE = _table()


def test_the_table_is_large() -> None:
    assert len(set(TABLE)) > 600
    # Both outcomes of each shortcut occur in it.
    assert sum(not mentions_role_words(sql) for sql in TABLE) > 20
    assert sum(mentions_role_words(sql) for sql in TABLE) > 300


@pytest.mark.parametrize("sql", sorted(set(TABLE)), ids=lambda sql: sql[:60])
def test_table_statements(sql: str) -> None:
    check(sql)


def test_plain_statements_skip_decoding() -> None:
    parse = _parser().parse_sql_json
    assert _plain_statements(parse(PGBENCH)) is not None
    assert _plain_statements(parse("SELECT 1; UPDATE t SET x = 1; CREATE TABLE u (a int)"))
    for sql in ("SET x = 1", "BEGIN", "SELECT set_config('a', 'b', false)",
                "UPDATE pg_settings SET setting = 'x'", "PREPARE p AS SELECT 1",
                "DECLARE c CURSOR FOR SELECT 1", "CREATE FUNCTION f() RETURNS int "
                "LANGUAGE sql AS 'SELECT 1'", "DO $$ $$", "CALL p()", "DISCARD ALL",
                "ALTER DATABASE d RESET ALL", "CLOSE c", "FETCH c", "EXECUTE p",
                "DEALLOCATE p"):
        assert _plain_statements(parse(sql)) is None, sql


def test_plain_statement_strings_cannot_fake_a_statement() -> None:
    sql = 'SELECT \'"stmt":{"VariableSetStmt":{"name":"role"}}\', "x""stmt"'
    analysis = analyze(sql)
    assert [statement.node for statement in analysis.statements] == ["SelectStmt"]
    check(sql)


def test_pgbench_select_needs_no_parse() -> None:
    assert not mentions_role_words(PGBENCH)
    assert analyze_roles(PGBENCH) == Analysis()


@pytest.mark.parametrize("sql", [
    "SET ROLE x", "SeT rOlE x", "SET/**/ROLE x", 'SET "role" = x', 'SET U&"\\0072ole" = x',
    "SET SESSION AUTHORIZATION x", "RESET ALL", "ALTER DATABASE d RESET ALL",
    'SELECT U&"set\\005fconfig"(\'role\', \'x\', false)',
    "SELECT set_config(E'\\x72ole', 'x', false)", "UPDATE pg_settings SET setting = 'x'",
    "DO $$ BEGIN END $$", "CALL p()", "END", "ABORT", "MOVE c", "CLOSE c",
    "ALTER ROUTINE f() SET search_path = x",
])
def test_role_constructs_are_noticed(sql: str) -> None:
    assert mentions_role_words(sql)


# Fragments that may hide a construct from a word test: case, comments inside
# and between words, quotes, escapes, dollar quotes, string continuation.
EVASIONS = [
    "SET", "set", "SeT", "RESET", "ROLE", "RoLe", "ro", "le", "/**/", "/* /* */ */", "--",
    "\n", " ", ";", '"', '""', "'", "''", "E'", "U&'", 'U&"', "\\0072", "\\x72", "\\",
    "$$", "$a$", "SESSION", "AUTHORIZATION", "author", "ization", "set_", "config",
    "set_config", "(", ")", ",", "=", "TO", "x", "1", "SELECT", "FROM", "t", "pg_", "settings",
    "UPDATE", "VALUES", "WITH", "AS", "ALL", "LOCAL", "DEFAULT", "NONE", "DISCARD", "DO",
    "CALL", "BEGIN", "END", "START", "TRANSACTION", "COMMIT", "ABORT", "SAVEPOINT", "s",
    "RELEASE", "PREPARE", "EXECUTE", "DEALLOCATE", "DECLARE", "CURSOR", "FOR", "FETCH",
    "MOVE", "CLOSE", "CREATE", "FUNCTION", "PROCEDURE", "ALTER", "ROUTINE", "DATABASE",
    "SYSTEM", "UESCAPE", "'!'", "!0072", "SHOW", "TABLE", "VIEW", "EXPLAIN", "ANALYZE",
    "standard_conforming_strings", "client_encoding", "NAMES", "'UTF8'", "off",
]
sql_like = st.lists(st.sampled_from(EVASIONS), max_size=20).map(" ".join)
glued = st.lists(st.sampled_from(EVASIONS), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(sql_like, glued))
def test_generated_sql(sql: str) -> None:
    check(sql)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text(sql: str) -> None:
    check(sql)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(st.one_of(sql_like, glued))
def test_generated_sql_long_run(sql: str) -> None:
    check(sql)


def test_every_word_is_lower_case() -> None:
    assert all(word == word.lower() for word in ROLE_WORDS)


@pytest.mark.parametrize("sql", [
    "SELECT " + ", ".join(f"c{n}" for n in range(400)) + " FROM t",
    "SELECT " + ", ".join(f"c{n}" for n in range(400)) + " FROM t; SET ROLE x",
    "SELECT " + "1 + " * 3000 + "1",
])
def test_long_texts(sql: str) -> None:
    assert len(sql) > 1024
    check(sql)
    assert analyze_roles(sql) == analyze_roles(sql[:7] + sql[7:])
