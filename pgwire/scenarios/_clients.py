"""The real clients a scenario runs with: pgwire's own, psycopg, and psql.

Each logs in with the same startup parameters and sends every statement as
one simple-protocol Query, so the proxy sees the same conversation whichever
client it is; each answer is reduced to the same :class:`Outcome` (rows as
text, or the error's SQLSTATE).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ..protocol import ProtocolError
from ..sqlclient import QueryError, SQLConnection
from ._model import ClientStep

__all__ = ["CLIENTS", "ClientName", "LoginFailed", "Outcome", "client_problem", "run_client"]

ClientName = Literal["pgwire", "psycopg", "psql"]
CLIENTS: Final[tuple[ClientName, ...]] = ("pgwire", "psycopg", "psql")
#: Startup parameters libpq (psycopg, psql) can send, besides user and database.
LIBPQ_PARAMETERS: Final = ("application_name", "options")
#: Sent when the scenario gives none, so that every client sends the same packet.
DEFAULT_APPLICATION_NAME: Final = "pgwire check"
_CONNECT_TIMEOUT: Final = 10
_PSQL_TIMEOUT: Final = 120
#: Linux refuses a longer single argument (MAX_ARG_STRLEN); psql gets SQL by -c.
_PSQL_MAX_SQL: Final = 100_000
_FATAL_SQLSTATE: Final = re.compile(r"^([0-9A-Z]{5}): (.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """The login was refused: the SQLSTATE when the client can tell it, and the message."""

    sqlstate: str | None
    message: str


@dataclass(slots=True)
class Outcome:
    """The answer to one Query: its rows (all result sets, values as text,
    NULL as None), or the error."""

    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    sqlstate: str | None = None
    message: str = ""
    #: The connection was gone: the message says why.
    lost: bool = False

    @property
    def failed(self) -> bool:
        return self.sqlstate is not None or self.lost


def client_problem(client: str) -> str | None:
    """Why ``client`` cannot run here, or None when it can."""
    if client == "pgwire":
        return None
    if client == "psycopg":
        try:
            import psycopg  # noqa: F401, PLC0415 - optional
        except ImportError:
            return "the psycopg client needs psycopg 3: pip install 'psycopg[binary]'"
        return None
    if client == "psql":
        if _psql_path() is None:
            return ("the psql client needs the psql program on PATH (or beside the "
                    "PostgreSQL server programs): apt-get install postgresql-client")
        return None
    return f"unknown client {client!r}: choose one of {', '.join(CLIENTS)}"


def unobservable(client: str, step: ClientStep) -> list[tuple[str, str]]:
    """What ``step`` expects that ``client`` cannot see: ``(key, problem)`` pairs,
    keys relative to the client's table."""
    if client == "pgwire":
        return []
    found: list[tuple[str, str]] = []
    if step.sqlstate is not None:
        found.append(("expect.sqlstate", f"{client} cannot tell the SQLSTATE of a refused "
                                         "login (libpq reports only the message): use "
                                         "--client pgwire for this check"))
    for name in step.parameters:
        if name not in LIBPQ_PARAMETERS:
            found.append((f"parameters.{name}",
                          f"{client} (libpq) can only send the startup parameters "
                          f"{' and '.join(LIBPQ_PARAMETERS)}: use --client pgwire, or "
                          f'options = "-c {name}=..."'))
    if client == "psql":
        for index, statement in enumerate(step.statements):
            if statement.sql.startswith("\\"):
                found.append((f"statements[{index}].sql",
                              "psql would run it as one of its own backslash commands, not "
                              "send it to the server: use --client pgwire"))
            if len(statement.sql.encode("utf-8")) > _PSQL_MAX_SQL:
                found.append((f"statements[{index}].sql",
                              f"longer than {_PSQL_MAX_SQL} bytes, which psql cannot take "
                              "as one command: use --client pgwire"))
    return found


def run_client(client: ClientName, address: tuple[str, int], step: ClientStep,
               queries: Sequence[str]) -> tuple[LoginFailed | None, list[Outcome]]:
    """Log in to ``address`` as ``step`` says, run ``queries`` in order on that
    one connection, disconnect. Returns the refusal (and no outcomes), or one
    :class:`Outcome` per query."""
    parameters = dict(step.parameters)
    parameters.setdefault("application_name", DEFAULT_APPLICATION_NAME)
    if client == "pgwire":
        return _run_pgwire(address, step, parameters, queries)
    if client == "psycopg":
        return _run_psycopg(address, step, parameters, queries)
    return _run_psql(address, step, parameters, queries)


# -- pgwire ------------------------------------------------------------------------------


def _run_pgwire(address: tuple[str, int], step: ClientStep, parameters: dict[str, str],
                queries: Sequence[str]) -> tuple[LoginFailed | None, list[Outcome]]:
    try:
        conn = SQLConnection.connect(address, user=step.user, password=step.password,
                                     database=step.database, sslmode="prefer",
                                     parameters=parameters, timeout=_CONNECT_TIMEOUT)
    except ProtocolError as exc:
        return LoginFailed(exc.sqlstate, exc.message), []
    except OSError as exc:
        # SQLConnection reports a FATAL ErrorResponse as "SQLSTATE: message".
        match = _FATAL_SQLSTATE.match(str(exc))
        if match:
            return LoginFailed(match.group(1), match.group(2)), []
        return LoginFailed(None, str(exc) or type(exc).__name__), []
    outcomes: list[Outcome] = []
    with conn:
        for sql in queries:
            if conn.closed:
                outcomes.append(Outcome(lost=True, message="the connection was closed"))
                continue
            try:
                outcomes.append(Outcome(rows=list(conn.execute(sql))))
            except QueryError as exc:
                outcomes.append(Outcome(sqlstate=exc.sqlstate, message=exc.message))
            except (OSError, ProtocolError) as exc:
                outcomes.append(Outcome(lost=True, message=str(exc) or type(exc).__name__))
    return None, outcomes


# -- psycopg -----------------------------------------------------------------------------


def _run_psycopg(address: tuple[str, int], step: ClientStep, parameters: dict[str, str],
                 queries: Sequence[str]) -> tuple[LoginFailed | None, list[Outcome]]:
    import psycopg  # noqa: PLC0415 - optional

    settings = {"host": address[0], "port": str(address[1]), "user": step.user,
                "dbname": step.database, "sslmode": "prefer",
                "connect_timeout": str(_CONNECT_TIMEOUT), **parameters}
    if step.password is not None:
        settings["password"] = step.password
    try:
        conn = psycopg.connect(psycopg.conninfo.make_conninfo("", **settings),
                               autocommit=True)
    except psycopg.Error as exc:
        return LoginFailed(exc.sqlstate, _libpq_message(str(exc))), []
    outcomes: list[Outcome] = []
    with conn:
        # A ClientCursor without parameters sends a simple Query, as the others do.
        cursor = psycopg.ClientCursor(conn)
        for sql in queries:
            if conn.closed:
                outcomes.append(Outcome(lost=True, message="the connection was closed"))
                continue
            try:
                cursor.execute(sql)
                rows: list[tuple[str | None, ...]] = []
                while True:
                    result = cursor.pgresult
                    if result is not None:
                        for row in range(result.ntuples):
                            rows.append(tuple(_text(result.get_value(row, column))
                                              for column in range(result.nfields)))
                    if not cursor.nextset():
                        break
                outcomes.append(Outcome(rows=rows))
            except psycopg.OperationalError as exc:
                if conn.closed or exc.sqlstate is None:
                    outcomes.append(Outcome(lost=True, message=str(exc).strip()))
                else:
                    outcomes.append(Outcome(sqlstate=exc.sqlstate,
                                            message=exc.diag.message_primary or str(exc)))
            except psycopg.Error as exc:
                outcomes.append(Outcome(sqlstate=exc.sqlstate or "XX000",
                                        message=exc.diag.message_primary or str(exc)))
    return None, outcomes


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _libpq_message(text: str) -> str:
    """libpq's connection failure without its preamble: the server's words."""
    _, found, message = text.partition("FATAL:")
    return " ".join((message if found else text).split())


# -- psql --------------------------------------------------------------------------------


def _psql_path() -> str | None:
    found = shutil.which("psql")
    if found is not None:
        return found
    try:
        from ..testing.cluster import find_postgres_bindir  # noqa: PLC0415

        candidate = find_postgres_bindir() / "psql"
    except Exception:
        return None
    return str(candidate) if candidate.is_file() else None


def _run_psql(address: tuple[str, int], step: ClientStep, parameters: dict[str, str],
              queries: Sequence[str]) -> tuple[LoginFailed | None, list[Outcome]]:
    psql = _psql_path()
    if psql is None:
        raise RuntimeError(client_problem("psql"))
    # Markers nobody's data can hold by chance: each -c command is followed by
    # a line that carries its SQLSTATE (00000 when it succeeded).
    token = secrets.token_hex(8)
    null = f"\x1aNULL{token}"
    conninfo = {"host": address[0], "port": str(address[1]), "user": step.user,
                "dbname": step.database, "sslmode": "prefer", **parameters}
    argv = [psql, "-X", "-q", "-w", "--csv", "-t", "-P", f"null={null}",
            "-d", " ".join(f"{key}={_conninfo_quote(value)}" for key, value in conninfo.items())]
    for index, sql in enumerate(queries):
        argv += ["-c", sql, "-c",
                 f"\\echo \x1dB{token} {index} :SQLSTATE :LAST_ERROR_MESSAGE \x1dE{token}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = str(_CONNECT_TIMEOUT)
    if step.password is not None:
        env["PGPASSWORD"] = step.password
    result = subprocess.run(argv, capture_output=True, text=True, env=env,
                            timeout=_PSQL_TIMEOUT, check=False)
    markers = list(re.finditer(
        f"\x1dB{token} (\\d+) ([0-9A-Z]{{5}}) (.*?) ?\x1dE{token}\n", result.stdout, re.DOTALL))
    if not markers and result.returncode != 0 and "connection to server" in result.stderr and (
            not result.stdout):
        return LoginFailed(None, _libpq_message(result.stderr)), []
    outcomes: list[Outcome] = []
    start = 0
    for match in markers:
        data = result.stdout[start:match.start()]
        start = match.end()
        sqlstate, message = match.group(2), match.group(3)
        if sqlstate != "00000":
            outcomes.append(Outcome(sqlstate=sqlstate, message=message))
        else:
            outcomes.append(Outcome(rows=_csv_rows(data, null)))
    while len(outcomes) < len(queries):
        reason = " ".join(line.strip() for line in result.stderr.splitlines()[-3:])
        outcomes.append(Outcome(lost=True, message=reason or f"psql exited with "
                                                             f"{result.returncode}"))
    return None, outcomes


def _csv_rows(data: str, null: str) -> list[tuple[str | None, ...]]:
    import csv  # noqa: PLC0415
    import io  # noqa: PLC0415

    rows: list[tuple[str | None, ...]] = []
    for row in csv.reader(io.StringIO(data, newline="")):
        rows.append(tuple(None if value == null else value for value in row))
    return rows


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
