"""``pgwire check FILE...``: run scenario files and report (see ``docs/scenarios.md``).

Progress goes to stderr (one line per scenario as it finishes), the results
table and the summary to stdout. Exit status: 0 every expectation held, 1 at
least one failed, 2 the files or the command line are wrong or the check
cannot run here (no PostgreSQL programs, a client not installed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ..proxy.config_file import Override
from ..testing.cluster import ClusterError, ClusterUnavailable
from ..testing.proxy import ADAPTERS, AdapterName
from ._clients import CLIENTS, ClientName
from ._database import open_database
from ._load import ScenarioError, load_scenario_file
from ._model import ScenarioFile
from ._report import (
    FileResults,
    format_progress,
    format_summary,
    format_table,
    now,
    write_junit_xml,
)
from ._run import ClientUnavailable, Result, check_client, run_scenarios, select_scenarios

__all__ = ["configure_parser", "run"]

_HELP = """\
Run role-mapping scenarios through a real pgwire proxy with a real client.
Each FILE declares roles and grants (or an existing database), the proxy's
configuration under [proxy] (the keys of pgwire.toml) and [[scenario]]
tables with what must happen. Without [database] a throwaway PostgreSQL is
started for each file. Prints progress to stderr, a pass/fail table to
stdout; exit 0 when all pass, 1 when any fails, 2 for a bad file or
command line. See docs/scenarios.md."""


def configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``check`` command to ``pgwire``'s sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check", help="run role-mapping scenarios through the proxy", description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", metavar="FILE", nargs="+", help="scenario files (TOML)")
    parser.add_argument("--adapter", choices=(*ADAPTERS, "all"), default="asyncio",
                        help="the proxy's I/O library; all runs every scenario with each "
                             "(default asyncio)")
    parser.add_argument("--client", choices=(*CLIENTS, "all"), default="pgwire",
                        help="the client that logs in through the proxy: pgwire's own "
                             "(default), psycopg or psql; all runs each")
    parser.add_argument("-k", dest="pattern", metavar="PATTERN",
                        help="only scenarios whose name contains PATTERN (ignoring case)")
    parser.add_argument("--junit-xml", metavar="PATH", help="also write JUnit XML there")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress lines; the table lists only failures")
    existing = parser.add_argument_group(
        "existing database", "run against a server that already runs, instead of [database] "
                             "in the file or a throwaway cluster")
    existing.add_argument("--database", metavar="HOST:PORT", help="the server's address")
    existing.add_argument("--database-user", metavar="USER",
                          help="the role that sets it up (default postgres)")
    existing.add_argument("--database-name", metavar="DB",
                          help="the database it connects to (default postgres)")
    existing.add_argument("--database-password-env", metavar="VAR",
                          help="environment variable holding that role's password")
    existing.add_argument("--database-sslmode", metavar="MODE",
                          help="TLS to the server (default prefer)")
    existing.add_argument("--apply-setup", action="store_true",
                          help="create the file's roles and databases there and run its "
                               "setup SQL (otherwise they must exist already)")
    return parser


def _overrides(args: argparse.Namespace) -> list[Override]:
    found: list[Override] = []
    for flag, key in (("database", "address"), ("database_user", "user"),
                      ("database_name", "database"),
                      ("database_password_env", "password_env"),
                      ("database_sslmode", "sslmode")):
        value = getattr(args, flag)
        if value is not None:
            found.append(Override(f"database.{key}", value, "--" + flag.replace("_", "-")))
    if args.apply_setup:
        found.append(Override("database.apply_setup", True, "--apply-setup"))
    return found


def run(args: argparse.Namespace, *, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    """Run ``pgwire check`` with parsed ``args``; return the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        return _Check(args, out, err).run()
    except KeyboardInterrupt:
        err.write("pgwire check: interrupted\n")
        return 130


class _Check:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.adapters: tuple[AdapterName, ...] = (
            ADAPTERS if args.adapter == "all" else (args.adapter,))
        self.clients: tuple[ClientName, ...] = (
            CLIENTS if args.client == "all" else (args.client,))
        self.done = 0
        self.total = 0

    def fail(self, message: str) -> int:
        self.err.write(f"pgwire check: {message}\n")
        return 2

    def run(self) -> int:
        overrides = _overrides(self.args)
        specs: list[ScenarioFile] = []
        try:
            for path in self.args.files:
                specs.append(load_scenario_file(path, overrides=overrides))
            for spec in specs:
                for client in self.clients:
                    check_client(spec, client, self.args.pattern)
        except (ScenarioError, ClientUnavailable) as exc:
            return self.fail(str(exc))
        counts = [len(select_scenarios(spec, self.args.pattern)) for spec in specs]
        if not sum(counts):
            what = f' whose name contains "{self.args.pattern}"' if self.args.pattern else ""
            return self.fail(f"no scenario{what} in {', '.join(self.args.files)}")
        self.total = sum(counts) * len(self.adapters) * len(self.clients)
        started = time.monotonic()
        files: list[FileResults] = []
        status = 0
        try:
            for spec, count in zip(specs, counts, strict=True):
                if count:  # results so far are kept (and written) if a later step fails
                    files.append(FileResults(source=spec.source, results=[], started=now()))
                    self._file(spec, files[-1])
        except (ScenarioError, ClientUnavailable) as exc:
            status = self.fail(str(exc))
        except (ClusterUnavailable, ClusterError) as exc:
            status = self.fail(f"cannot start a throwaway PostgreSQL: {exc}")
        files = [item for item in files if item.results]
        if files and self.args.junit_xml:
            try:
                write_junit_xml(files, self.args.junit_xml)
            except OSError as exc:
                status = status or self.fail(f"cannot write {self.args.junit_xml}: "
                                             f"{exc.strerror or exc}")
        if status:
            return status
        elapsed = time.monotonic() - started
        self.out.write(format_table(files, only_failed=self.args.quiet) + "\n\n")
        self.out.write(format_summary(files, elapsed) + "\n")
        self.out.flush()
        return 1 if any(not r.passed for f in files for r in f.results) else 0

    def _file(self, spec: ScenarioFile, item: FileResults) -> None:
        where = ("a throwaway PostgreSQL" if spec.database is None else
                 f"{spec.database.address[0]}:{spec.database.address[1]}")
        self.progress(f"{spec.source}: setting up {where}")
        opened = time.monotonic()
        with open_database(spec) as db:
            self.progress(f"{spec.source}: database ready ({time.monotonic() - opened:.1f} s)")
            for adapter in self.adapters:
                for client in self.clients:
                    item.results += run_scenarios(spec, db, adapter=adapter, client=client,
                                                  pattern=self.args.pattern,
                                                  progress=self.result)

    def progress(self, line: str) -> None:
        if not self.args.quiet:
            self.err.write(line + "\n")
            self.err.flush()

    def result(self, result: Result) -> None:
        self.done += 1
        self.progress(format_progress(self.done, self.total, result,
                                      show_client=len(self.clients) > 1))
