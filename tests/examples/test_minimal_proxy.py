"""examples/minimal_proxy.py: a whole proxy in about 30 lines, logging statements."""

from __future__ import annotations

import ast
import io
import signal
import tokenize
from typing import Any

import psycopg
import pytest

from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import running_proxy
from tests.interop.proxy_wire import EXAMPLES, load_example

from .programs import running_example, stop

minimal_proxy = load_example("minimal_proxy")
SOURCE = EXAMPLES / "minimal_proxy.py"


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not the module docstring."""
    docstring = ast.parse(source).body[0]
    assert isinstance(docstring, ast.Expr), "the example starts with its docstring"
    assert docstring.end_lineno is not None
    skipped = set(range(docstring.lineno, docstring.end_lineno + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - skipped)


def test_it_is_about_thirty_lines_of_code() -> None:
    assert code_lines("'''doc'''\n\n# a comment\nx = (1,\n     2)  # and one\n") == 2
    assert code_lines(SOURCE.read_text()) <= 35


def connect(cluster: PostgresCluster, port: int, **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(host="127.0.0.1", port=port,
                                                    sslmode="disable", **extra),
                           autocommit=True)


def test_it_logs_each_statement_with_its_user(pg_cluster: PostgresCluster,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                         middleware=[minimal_proxy.LogStatements])
    with running_proxy(config) as proxy, connect(pg_cluster, proxy.port) as conn:
        with psycopg.ClientCursor(conn) as cursor:          # a simple Query
            assert cursor.execute("select 'simple'").fetchone() == ("simple",)
        assert conn.execute("select %s::text", ["extended"]).fetchone() == ("extended",)
    logged = capsys.readouterr().out.splitlines()
    user = pg_cluster.superuser
    assert f"{user}: select 'simple'" in logged
    assert f"{user}: select $1::text" in logged


def test_it_runs_as_a_program_and_ctrl_c_stops_it(pg_cluster: PostgresCluster) -> None:
    upstream = f"{pg_cluster.host}:{pg_cluster.port}"
    with running_example("minimal_proxy", "--upstream", upstream) as (process, port):
        with connect(pg_cluster, port) as conn:
            assert conn.execute("select 42").fetchone() == (42,)
        stdout, stderr = stop(process, signal.SIGINT)
    assert process.returncode == 0, stderr
    assert f"{pg_cluster.superuser}: select 42" in stdout.splitlines()
