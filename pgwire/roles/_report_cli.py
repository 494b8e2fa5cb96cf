"""``pgwire roles``: write the role report of a database (see docs/role-report.md).

Exit codes: 0 the report was written; 1 ``--fail-on-warning`` and the report
has a warning (not ignored with ``--ignore``); 2 a usage, configuration or
connection error (the message says which), or Graphviz missing for
``--format svg``.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

__all__ = ["FORMATS", "configure_parser", "run"]

FORMATS: Final = ("markdown", "json", "mermaid", "svg", "dot")

_HELP = """\
Write a report of the roles of a PostgreSQL database: every role with its
attributes, every membership with its options, what each login role reaches
through membership chains, warnings about over-granting (with stable codes),
and, with --config, how the proxy's RoleRewrite maps and RoleGuard guards each
startup user. Connect with --dsn (libpq key=value or postgresql:// URI) and/or
--host/--port/--user/--dbname (PGPASSWORD and the other PG* variables are
read too), or build a throwaway database from a `pgwire check` scenario file
with --scenario.

Exit status: 0 report written; 1 --fail-on-warning and a warning was found;
2 usage, configuration or connection error, or no Graphviz for --format svg."""


def configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``roles`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "roles", help="report roles, memberships, reach and over-granting",
        description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("where the roles come from")
    source.add_argument("--dsn", metavar="CONNINFO",
                        help='"host=... port=... user=... dbname=... sslmode=..." or '
                             "postgresql://user@host:port/dbname")
    source.add_argument("--host", help="server host or Unix socket directory "
                                       "(default $PGHOST or 127.0.0.1)")
    source.add_argument("--port", type=int, help="server port (default $PGPORT or 5432)")
    source.add_argument("--user", "-U", help="login role (default $PGUSER or the OS user)")
    source.add_argument("--dbname", "-d", help="database (default $PGDATABASE or the user; "
                                                "with --scenario, one of its databases)")
    source.add_argument("--scenario", metavar="FILE",
                        help="a `pgwire check` scenario file: build its throwaway database "
                             "(or use the one it names) and report on it, with its [proxy] "
                             "configuration unless --config is given")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="a pgwire.toml whose RoleRewrite, RoleGuard and pool to report")
    parser.add_argument("--format", "-f", choices=FORMATS, default="markdown",
                        help="output format (default markdown)")
    parser.add_argument("--output", "-o", metavar="PATH",
                        help="write here instead of standard output")
    parser.add_argument("--include-predefined", action="store_true",
                        help="list pg_* predefined roles in the role table and diagram too")
    parser.add_argument("--fail-on-warning", action="store_true",
                        help="exit 1 when the report has a warning (for CI)")
    parser.add_argument("--ignore", metavar="CODE[:SUBJECT]", action="append", default=[],
                        help="leave out warnings with this code (only for this subject: a "
                             "role name or rule); repeat for several")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``pgwire roles`` with parsed ``args``; return the exit code."""
    from ._report_command import run as run_command  # noqa: PLC0415 - keeps --help fast

    return run_command(args)
