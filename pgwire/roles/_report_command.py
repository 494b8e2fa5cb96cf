"""What ``pgwire roles`` does once its arguments are parsed (see :mod:`._report_cli`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TextIO

from ..protocol import ProtocolError
from ..proxy.config_file import ConfigError, ProxyFile
from ..sqlclient import QueryError, SQLConnection
from ._graph import RoleGraph, load_role_graph
from ._report_build import WARNING_CODES, build_report
from ._report_dsn import DSNError, resolve_conninfo
from ._report_model import RoleReport
from ._report_render import GraphvizError, to_dot, to_json, to_markdown, to_mermaid, to_svg
from .report import load_password_status, load_proxy_for_report, proxy_for_report

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run ``pgwire roles`` with parsed ``args``; return the exit code."""
    try:
        ignored = _ignored(args.ignore)
    except ValueError as exc:
        return _fail(str(exc))
    if args.scenario is not None and (args.dsn is not None or any(
            getattr(args, name) is not None for name in ("host", "port", "user"))):
        return _fail("--scenario builds its own database: leave out --dsn, --host, --port "
                     "and --user (--dbname picks one of its databases)")
    try:
        report = _scenario_report(args) if args.scenario is not None else _live_report(args)
    except _Failure as failure:
        return _fail(str(failure))
    report = _kept(report, ignored)
    try:
        _write(report, args.format, args.output)
    except GraphvizError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror or exc}")
    if report.warnings:
        sys.stderr.write(f"pgwire roles: {len(report.warnings)} warning(s)\n")
    return 1 if args.fail_on_warning and report.warnings else 0


class _Failure(Exception):
    """An error to report in one line, exit 2."""


def _fail(message: str) -> int:
    sys.stderr.write(f"pgwire roles: {message}\n")
    return 2


def _ignored(values: Sequence[str]) -> dict[str, set[str] | None]:
    """``--ignore`` values: code -> the subjects to leave out (None: all of them)."""
    found: dict[str, set[str] | None] = {}
    for value in values:
        code, colon, subject = value.partition(":")
        if code not in WARNING_CODES:
            raise ValueError(f"--ignore {value!r}: unknown warning code {code!r}; known: "
                             f"{', '.join(WARNING_CODES)}")
        if not colon:
            found[code] = None  # a bare CODE wins over CODE:SUBJECT
            continue
        if not subject:
            raise ValueError(f"--ignore {value!r}: give a subject after the colon")
        subjects = found.setdefault(code, set())
        if subjects is not None:
            subjects.add(subject)
    return found


def _kept(report: RoleReport, ignored: dict[str, set[str] | None]) -> RoleReport:
    kept = []
    for warning in report.warnings:
        if warning.code in ignored:
            subjects = ignored[warning.code]
            if subjects is None or warning.subject in subjects:
                continue
        kept.append(warning)
    return replace(report, warnings=tuple(kept))


@contextlib.contextmanager
def _connection_errors(where: str) -> Iterator[None]:
    """Turn the ways a connection fails into one clear :class:`_Failure`."""
    try:
        yield
    except QueryError as exc:
        raise _Failure(f"{where}: a catalog query failed: {exc}") from None
    except ProtocolError as exc:  # a refused login (LoginRefused), a broken peer
        raise _Failure(f"{where}: {exc}") from None
    except ssl.SSLError as exc:
        raise _Failure(f"{where}: TLS failed: {exc}") from None
    except TimeoutError:
        raise _Failure(f"{where}: timed out") from None
    except ConnectionError as exc:
        raise _Failure(f"{where}: {exc.strerror or exc or type(exc).__name__}") from None
    except OSError as exc:
        raise _Failure(f"{where}: {exc.strerror or exc}") from None


def _read_graph(conn: SQLConnection) -> tuple[RoleGraph, dict[str, bool] | None]:
    graph = load_role_graph(conn)
    return graph, load_password_status(conn)


def _live_report(args: argparse.Namespace) -> RoleReport:
    try:
        info = resolve_conninfo(args.dsn, host=args.host, port=args.port, user=args.user,
                                dbname=args.dbname)
    except DSNError as exc:
        raise _Failure(f"--dsn: {exc}" if args.dsn else str(exc)) from None
    where = f"cannot read the roles of {info.describe()}"
    with _connection_errors(where), info.connect() as conn:
        graph, passwords = _read_graph(conn)
    proxy = _proxy_file(args.config, graph) if args.config else None
    return build_report(graph, proxy=proxy, database=info.dbname,
                        include_predefined=args.include_predefined, passwords=passwords)


def _proxy_file(path: str, graph: RoleGraph) -> ProxyFile:
    try:
        return load_proxy_for_report(path, graph)
    except ConfigError as exc:
        raise _Failure(str(exc)) from None


def _scenario_report(args: argparse.Namespace) -> RoleReport:
    try:
        from ..scenarios import (  # type: ignore[attr-defined,unused-ignore]  # noqa: PLC0415
            ScenarioError,
            load_scenario_file,
            open_database,
        )
    except ImportError as exc:
        raise _Failure(f"--scenario needs pgwire.scenarios, which cannot be imported: "
                       f"{exc}") from None
    try:
        spec = load_scenario_file(args.scenario)
    except ScenarioError as exc:
        raise _Failure(str(exc)) from None
    except OSError as exc:
        raise _Failure(f"{args.scenario}: {exc.strerror or exc}") from None
    sys.stderr.write(f"pgwire roles: preparing the database of {args.scenario}\n")
    try:
        with open_database(spec) as db:
            where = f"cannot read the roles of the database of {args.scenario}"
            with _connection_errors(where), db.connect(database=args.dbname) as conn:
                graph, passwords = _read_graph(conn)
            proxy = (_proxy_file(args.config, graph) if args.config else
                     proxy_for_report(spec.proxy_data(db), graph, source=spec.source,
                                      base_dir=spec.base_dir))
            database = args.dbname or db.database
    except (ScenarioError, ConfigError) as exc:
        raise _Failure(str(exc)) from None
    return build_report(graph, proxy=proxy, database=database,
                        include_predefined=args.include_predefined, passwords=passwords)


def _write(report: RoleReport, output_format: str, output: str | None) -> None:
    if output_format == "svg":
        data = to_svg(report)
        if output is None:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as file:
                file.write(data)
        return
    render = {"markdown": to_markdown, "json": to_json, "mermaid": to_mermaid,
              "dot": to_dot}[output_format]
    text = render(report)
    if output is None:
        _print(text, sys.stdout)
    else:
        with open(output, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
    if output is not None:
        sys.stderr.write(f"pgwire roles: wrote {output_format} to {os.fspath(output)}\n")


def _print(text: str, stream: TextIO) -> None:
    stream.write(text)
    stream.flush()
