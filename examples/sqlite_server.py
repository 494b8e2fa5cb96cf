"""A PostgreSQL server backed by SQLite: psql and psycopg talk to it as to PostgreSQL.

    python examples/sqlite_server.py --listen 127.0.0.1:5433 [--database FILE]
    psql -h 127.0.0.1 -p 5433 -U demo -c "create table t(a int, b text)"
    psql -h 127.0.0.1 -p 5433 -U demo -c "insert into t values (1, 'Zoë'), (2, null)"
    psql -h 127.0.0.1 -p 5433 -U demo -c "select * from t"

:class:`pgwire.Backend` does the protocol (framing, limits, message order, and
a check of every answer this file sends); SQLite runs the SQL, in its own
dialect. Everybody is trusted; TLS is declined.

- **One database per server.** ``--database FILE`` opens a SQLite file; the
  default is an in-memory database shared by every client of this server (a
  named shared-cache database that the server keeps open). Each client gets
  its own SQLite connection to it, so transactions are isolated by SQLite's
  locks, not by a lock here: a client that meets another's open write
  transaction gets 55P03 (lock_not_available) instead of waiting forever.
- **Transactions.** BEGIN / START TRANSACTION, COMMIT / END, ROLLBACK / ABORT
  behave as in PostgreSQL, ReadyForQuery status included: after an error
  inside a block every statement but ROLLBACK gets 25P02, and COMMIT rolls
  back. Outside a block each statement commits on its own, including each
  statement of a multi-statement Query (PostgreSQL would run those in one
  implicit transaction).
- **Types.** SQLite knows a result's types only from its values, so each
  column's type is chosen from the values it holds: integers int8, reals
  float8, blobs bytea, text text, a mix text; columns declared BOOL or BOOLEAN
  come back as bool (a declared-type converter). A statement described before
  it runs (Describe of a statement, as asyncpg does) reports text for every
  column, and its rows are then sent as text. Results go in text or binary
  format, as the client asks. Parameters ``$1``... become SQLite's ``?1``...;
  they arrive as text or binary, and int, float, bool, bytea and text types
  are converted to SQLite values. A parameter the client gave no type is
  described as text, so a driver that asks first (asyncpg) must pass strings.
- **Errors** get PostgreSQL's SQLSTATEs: 42601 syntax error, 42P01 no such
  table, 42703 no such column, 42P07 already exists, 23505 unique, 23502 not
  null, 23503 foreign key, 23514 check, 55P03 locked, 54000 too big.

Not here: the PostgreSQL catalogs (psql's ``\\d`` fails with 42P01), SET and
SHOW, COPY, cancel requests (accepted and ignored), passwords.

Why not pgwire's own demo server (``pgwire/demo_server.py``)? Its
``DemoSession`` plans every statement with its own small SQL parser before it
runs, and it has no seam where a different engine could take over; this file
is a smaller server of its own, built directly on :class:`pgwire.Backend`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import re
import secrets
import signal
import socket
import sqlite3
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pgwire as pw

__all__ = ["SQLError", "SQLiteServer", "SQLiteSession", "split_statements"]

# Type OIDs (pg_type).
BOOL, BYTEA, INT8, INT2, INT4, TEXT = 16, 17, 20, 21, 23, 25
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
TYPE_SIZES: Final = {BOOL: 1, BYTEA: -1, INT8: 8, TEXT: -1, FLOAT8: 8}
IDLE, IN_BLOCK, FAILED = (pw.TransactionStatus.IDLE, pw.TransactionStatus.IN_TRANSACTION,
                          pw.TransactionStatus.FAILED)
SETTINGS: Final = {"server_version": "15.0", "server_encoding": "UTF8",
                   "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
                   "integer_datetimes": "on", "standard_conforming_strings": "on",
                   "TimeZone": "UTC", "application_name": "", "is_superuser": "off"}

# Declared BOOL/BOOLEAN columns come back as Python bools (with PARSE_DECLTYPES).
for _name in ("BOOL", "BOOLEAN"):
    sqlite3.register_converter(_name, lambda raw: raw.lower() in (b"1", b"t", b"true", b"on"))


class SQLError(Exception):
    """An error the client gets as an ErrorResponse with this SQLSTATE."""

    def __init__(self, code: str, message: str, severity: str = "ERROR") -> None:
        super().__init__(message)
        self.code, self.message, self.severity = code, message, severity

    def response(self) -> pw.ErrorResponse:
        return pw.ErrorResponse(severity=self.severity, severity_nonlocalized=self.severity,
                                code=self.code, message=self.message)


def sql_error(exc: sqlite3.Error) -> SQLError:
    """The PostgreSQL error for a SQLite one."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")
    if isinstance(exc, sqlite3.IntegrityError):
        for marker, code in (("UNIQUE", "23505"), ("PRIMARYKEY", "23505"), ("NOTNULL", "23502"),
                             ("FOREIGNKEY", "23503"), ("CHECK", "23514")):
            if name.endswith(marker):
                return SQLError(code, text)
        return SQLError("23000", text)
    for needle, code in (("no such table", "42P01"), ("no such column", "42703"),
                         ("already exists", "42P07"), ("no such function", "42883"),
                         ("syntax error", "42601"), ("incomplete input", "42601"),
                         ("unrecognized token", "42601"), ("locked", "55P03"),
                         ("too big", "54000"), ("one statement at a time", "42601"),
                         ("bindings", "08P01"), ("interrupted", "57014")):
        if needle in text:
            return SQLError(code, text)
    return SQLError("42000" if isinstance(exc, sqlite3.OperationalError) else "XX000", text)


# -- SQL text -------------------------------------------------------------------------

_QUOTED_OR_PARAMETER: Final = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$([0-9]+)")


def to_sqlite(sql: str) -> tuple[str, int]:
    """``sql`` with ``$n`` turned into SQLite's ``?n`` (outside quotes), and the
    highest parameter number."""
    highest = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal highest
        if match.group(1) is None:
            return match.group(0)
        highest = max(highest, int(match.group(1)))
        return "?" + match.group(1)

    return _QUOTED_OR_PARAMETER.sub(replace, sql), highest


def split_statements(sql: str) -> list[str]:
    """The statements of a multi-statement Query, split where SQLite says one ends
    (a ``;`` inside a string, a comment or a trigger body does not end one)."""
    statements: list[str] = []
    start = 0
    for semicolon in re.finditer(";", sql):
        if sqlite3.complete_statement(sql[start:semicolon.end()]):
            statements.append(sql[start:semicolon.end()])
            start = semicolon.end()
    statements.append(sql[start:])
    return [s for s in statements if s.strip(" \t\r\n;")]


def words(sql: str) -> list[str]:
    """The statement's first keywords, lower case, comments skipped."""
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)
    return re.findall(r"[a-z_]+", text.lower())[:3]


def command_tag(sql: str, rows: int, changed: int) -> str:
    """The CommandComplete tag PostgreSQL would send."""
    first = words(sql) or ["select"]
    verb = first[0].upper()
    if verb == "INSERT":
        return f"INSERT 0 {changed}"
    if verb in ("UPDATE", "DELETE"):
        return f"{verb} {changed}"
    if verb in ("CREATE", "DROP", "ALTER") and len(first) > 1:
        kind = [w for w in first[1:] if w not in ("temp", "temporary", "unique", "virtual")]
        return f"{verb} {kind[0].upper()}" if kind else verb
    return f"SELECT {rows}" if verb in ("SELECT", "VALUES", "WITH", "PRAGMA") else verb


# -- values -------------------------------------------------------------------------------


def column_type(values: Sequence[Any]) -> int:
    """The type OID for a column holding ``values``."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return BOOL
    if kinds <= {int, bool} and kinds:
        return INT8
    if kinds <= {int, float} and kinds:
        return FLOAT8
    return BYTEA if kinds == {bytes} else TEXT


def text_value(value: Any, oid: int) -> str:
    """The text format of ``value`` as a value of type ``oid``."""
    if oid == BOOL or (isinstance(value, bool) and oid == TEXT):
        return "t" if value else "f"
    if oid == INT8:
        return str(int(value))
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, float) or oid == FLOAT8:
        number = float(value)
        if math.isnan(number):
            return "NaN"
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(number, repr(number))
    return str(value)


def binary_value(value: Any, oid: int) -> bytes:
    """The binary format of ``value`` as a value of type ``oid``."""
    if oid == INT8:
        return struct.pack("!q", value)
    if oid == FLOAT8:
        return struct.pack("!d", float(value))
    if oid == BOOL:
        return b"\x01" if value else b"\x00"
    if oid == BYTEA:
        return bytes(value)
    return text_value(value, oid).encode()      # text: its binary form is its text


def parameter_value(data: bytes, binary: bool, oid: int) -> Any:
    """A Bind parameter as the SQLite value to bind."""
    try:
        if binary:
            if oid in (INT2, INT4, INT8):
                return int.from_bytes(data, "big", signed=True)
            if oid in (FLOAT4, FLOAT8):
                return struct.unpack("!f" if oid == FLOAT4 else "!d", data)[0]
            if oid == BOOL:
                return int(data != b"\x00")
            if oid == BYTEA:
                return data
            if oid in (0, TEXT, 1043, 1042, 19, 705):
                return data.decode()
            raise SQLError("0A000", f"binary parameters of type OID {oid} are not supported; "
                           "send them in text format")
        text = data.decode()
        if oid in (INT2, INT4, INT8):
            return int(text)
        if oid in (FLOAT4, FLOAT8, NUMERIC):
            return float(text)
        if oid == BOOL:
            return int(text.lower() in ("t", "true", "1", "on", "yes", "y"))
        if oid == BYTEA and text.startswith("\\x"):
            return bytes.fromhex(text[2:])
        return text
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise SQLError("22P02", f"invalid parameter of type OID {oid}: {exc}") from None


# -- one client, sans-IO ------------------------------------------------------------------


@dataclass
class Result:
    """A statement's outcome: its columns (None: it returns no rows), rows and tag."""

    columns: list[tuple[str, int]] | None
    rows: list[tuple[Any, ...]]
    tag: str


@dataclass
class Prepared:
    sql: str                            # already in SQLite's dialect
    original: str
    parameter_types: tuple[int, ...]
    described: bool = False                          # a Describe of it was answered
    columns: list[tuple[str, int]] | None = None     # what that Describe said


@dataclass
class Portal:
    statement: Prepared
    parameters: tuple[Any, ...]
    formats: tuple[int, ...]
    result: Result | None = None
    sent: int = 0
    columns: list[tuple[str, int]] | None = field(default=None)


class SQLiteSession:
    """The server side of one client connection, without I/O: bytes in, bytes out.

    ``db`` is this client's own SQLite connection, opened with
    ``isolation_level=None`` so that BEGIN and COMMIT are the client's own.
    """

    def __init__(self, db: sqlite3.Connection, *, process_id: int = 1,
                 max_message_size: int = pw.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.backend = pw.Backend(max_message_size=max_message_size)
        self.db = db
        self.process_id = process_id
        self.status = IDLE
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.skipping = False       # after an error in the extended protocol, until Sync
        self.closed = False
        self._out = bytearray()

    def receive_data(self, data: bytes) -> bytes:
        """Process bytes from the client (``b""``: it hung up); return the answer."""
        self.backend.receive_data(data)
        while not self.closed:
            try:
                event = self.backend.next_event()
            except pw.RemoteProtocolError as exc:   # the client broke the protocol
                with contextlib.suppress(pw.LocalProtocolError):
                    self.send(pw.error_response(exc))
                self.closed = True
                break
            if event is pw.NEED_DATA:
                break
            self.dispatch(event)
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, message: pw.Message) -> None:
        self._out += self.backend.send(message)

    def dispatch(self, event: object) -> None:
        if isinstance(event, pw.SSLRequest):
            self.send(pw.SSLResponse(accepted=False))
        elif isinstance(event, pw.GSSENCRequest):
            self.send(pw.GSSENCResponse(accepted=False))
        elif isinstance(event, pw.StartupMessage):
            self.login()
        elif isinstance(event, pw.Query):
            self.simple_query(event.query)
        elif isinstance(event, pw.Parse | pw.Bind | pw.Describe | pw.Execute | pw.Close):
            if not self.skipping:
                try:
                    self.extended(event)
                except SQLError as exc:
                    self.fail(exc)
                    self.skipping = True
        elif isinstance(event, pw.Sync):
            self.skipping = False
            if self.status is IDLE:
                self.portals.clear()   # the implicit transaction ends, and its portals
            self.send(pw.ReadyForQuery(status=self.status))
        elif isinstance(event, pw.FunctionCall):
            self.fail(SQLError("0A000", "function calls are not supported"))
            self.send(pw.ReadyForQuery(status=self.status))
        elif isinstance(event, pw.Terminate | pw.ConnectionClosed | pw.CancelRequest
                        | pw.DirectTLSHandshake):
            self.closed = True
        # Flush: answers are written after every read anyway; stray COPY messages: ignored.

    def login(self) -> None:
        if self.backend.protocol_negotiation is not None:
            self.send(self.backend.protocol_negotiation)
        self.send(pw.AuthenticationOk())
        for name, value in SETTINGS.items():
            self.send(pw.ParameterStatus(name=name, value=value))
        key_size = 32 if self.backend.protocol_version & 0xFFFF >= 2 else 4
        self.send(pw.BackendKeyData(process_id=self.process_id,
                                    secret_key=secrets.token_bytes(key_size)))
        self.send(pw.ReadyForQuery(status=self.status))

    def fail(self, exc: SQLError) -> None:
        self.send(exc.response())
        if self.status is IN_BLOCK:
            self.status = FAILED

    # -- running a statement -----------------------------------------------------------

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> Result:
        first = words(sql)
        verb = first[0] if first else ""
        ends_block = verb in ("commit", "end", "rollback", "abort")
        if self.status is FAILED and not ends_block:
            raise SQLError("25P02", "current transaction is aborted, commands ignored until "
                           "end of transaction block")
        if verb in ("begin", "start") or (ends_block and "to" not in first):
            return self.transaction(verb)
        try:
            cursor = self.db.execute(sql, parameters)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise sql_error(exc) from None
        # After a failed block only ROLLBACK TO SAVEPOINT gets here: it recovers the block.
        self.status = IN_BLOCK if self.db.in_transaction else IDLE
        columns = None
        if cursor.description is not None:
            columns = [(d[0], column_type([row[i] for row in rows]))
                       for i, d in enumerate(cursor.description)]
        changed = len(rows) if columns is not None else max(cursor.rowcount, 0)
        return Result(columns, rows, command_tag(sql, len(rows), changed))

    def transaction(self, verb: str) -> Result:
        """BEGIN, COMMIT and ROLLBACK, with PostgreSQL's warnings and failed blocks."""
        open_block = self.db.in_transaction
        if verb in ("begin", "start"):
            if open_block:
                self.warn("25001", "there is already a transaction in progress")
            else:
                self.execute("BEGIN")
            tag = "BEGIN" if verb == "begin" else "START TRANSACTION"
        elif not open_block and self.status is not FAILED:
            self.warn("25P01", "there is no transaction in progress")
            tag = "COMMIT" if verb in ("commit", "end") else "ROLLBACK"
        elif verb in ("commit", "end") and self.status is not FAILED:
            self.execute("COMMIT")
            tag = "COMMIT"
        else:                                         # ROLLBACK, or COMMIT of a failed block
            if open_block:
                self.execute("ROLLBACK")
            tag = "ROLLBACK"
        self.status = IN_BLOCK if self.db.in_transaction else IDLE
        return Result(None, [], tag)

    def execute(self, sql: str) -> None:
        try:
            self.db.execute(sql)
        except sqlite3.Error as exc:
            raise sql_error(exc) from None

    def warn(self, code: str, message: str) -> None:
        self.send(pw.NoticeResponse(severity="WARNING", severity_nonlocalized="WARNING",
                                    code=code, message=message))

    # -- the simple protocol -------------------------------------------------------------

    def simple_query(self, sql: str) -> None:
        self.statements.pop("", None)      # a Query destroys the unnamed statement and portal
        self.portals.pop("", None)
        try:
            statements = split_statements(sql)
            if not statements:
                self.send(pw.EmptyQueryResponse())
            for statement in statements:
                result = self.run(to_sqlite(statement)[0])
                if result.columns is not None:
                    self.send(self.row_description(result.columns, ()))
                    for row in result.rows:
                        self.send(self.data_row(result.columns, row, ()))
                self.send(pw.CommandComplete(tag=result.tag))
        except SQLError as exc:
            self.fail(exc)
        self.send(pw.ReadyForQuery(status=self.status))

    # -- the extended protocol -----------------------------------------------------------

    def extended(self, message: pw.Parse | pw.Bind | pw.Describe | pw.Execute | pw.Close
                 ) -> None:
        if isinstance(message, pw.Parse):
            self.parse(message)
        elif isinstance(message, pw.Bind):
            self.bind(message)
        elif isinstance(message, pw.Describe):
            self.describe(message)
        elif isinstance(message, pw.Execute):
            self.execute_portal(message)
        else:
            (self.statements if message.kind == "S" else self.portals).pop(message.name, None)
            self.send(pw.CloseComplete())

    def parse(self, message: pw.Parse) -> None:
        if message.statement and message.statement in self.statements:
            raise SQLError("42P05", f'prepared statement "{message.statement}" already exists')
        if len(split_statements(message.query)) > 1:
            raise SQLError("42601", "cannot insert multiple commands into a prepared statement")
        sql, count = to_sqlite(message.query)
        declared = message.parameter_types
        types = tuple(declared[i] if i < len(declared) else 0
                      for i in range(max(count, len(declared))))
        self.statements[message.statement] = Prepared(sql, message.query, types)
        self.send(pw.ParseComplete())

    def bind(self, message: pw.Bind) -> None:
        statement = self.statements.get(message.statement)
        if statement is None:
            raise SQLError("26000", f'prepared statement "{message.statement}" does not exist')
        if message.portal and message.portal in self.portals:
            raise SQLError("42P03", f'portal "{message.portal}" already exists')
        values = message.parameters
        if len(values) != len(statement.parameter_types):
            raise SQLError("08P01", f"bind message supplies {len(values)} parameters, but "
                           f"prepared statement requires {len(statement.parameter_types)}")
        formats = message.parameter_formats
        parameters = tuple(
            None if data is None else parameter_value(
                data, (formats[0] if len(formats) == 1 else formats[i] if formats else 0) == 1,
                oid)
            for i, (data, oid) in enumerate(zip(values, statement.parameter_types, strict=True)))
        self.portals[message.portal] = Portal(statement, parameters, message.result_formats)
        self.send(pw.BindComplete())

    def describe(self, message: pw.Describe) -> None:
        if message.kind == "S":
            statement = self.statements.get(message.name)
            if statement is None:
                raise SQLError("26000", f'prepared statement "{message.name}" does not exist')
            self.send(pw.ParameterDescription(
                parameter_types=tuple(t or TEXT for t in statement.parameter_types)))
            statement.columns = self.statement_columns(statement)
            statement.described = True
            columns, formats = statement.columns, tuple[int, ...]()
        else:
            portal = self.portal(message.name)
            columns, formats = self.portal_columns(portal), portal.formats
        self.send(pw.NoData() if columns is None else self.row_description(columns, formats))

    def statement_columns(self, statement: Prepared) -> list[tuple[str, int]] | None:
        """A statement's columns before it runs: names from a query that returns no
        rows, every type text. Only queries (SELECT, VALUES, WITH) can be asked."""
        if words(statement.sql)[:1] not in (["select"], ["values"], ["with"]):
            return None
        try:
            probe = f"SELECT * FROM ({statement.sql.rstrip().rstrip(';')}) LIMIT 0"
            cursor = self.db.execute(probe, [None] * len(statement.parameter_types))
        except sqlite3.Error as exc:
            raise sql_error(exc) from None
        return [(d[0], TEXT) for d in cursor.description or ()]

    def portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise SQLError("34000", f'portal "{name}" does not exist')
        return portal

    def portal_columns(self, portal: Portal) -> list[tuple[str, int]] | None:
        """Run the portal (once) and fix the columns its rows are sent with."""
        if portal.result is None:
            portal.result = self.run(portal.statement.sql, portal.parameters)
            # What the client was told about the statement wins, so rows match it.
            statement = portal.statement
            portal.columns = statement.columns if statement.described else portal.result.columns
        return portal.columns

    def execute_portal(self, message: pw.Execute) -> None:
        portal = self.portal(message.portal)
        if not portal.statement.original.strip(" \t\r\n;"):
            self.send(pw.EmptyQueryResponse())
            return
        columns = self.portal_columns(portal)
        assert portal.result is not None
        rows = portal.result.rows
        stop = len(rows) if message.max_rows <= 0 else min(len(rows),
                                                           portal.sent + message.max_rows)
        for row in rows[portal.sent:stop]:
            if columns is not None:     # None: the client was told NoData
                self.send(self.data_row(columns, row, portal.formats))
        start, portal.sent = portal.sent, stop
        if stop < len(rows):
            self.send(pw.PortalSuspended())
        elif portal.result.tag.startswith("SELECT"):
            self.send(pw.CommandComplete(tag=f"SELECT {stop - start}"))
        else:
            self.send(pw.CommandComplete(tag=portal.result.tag))

    # -- rows -------------------------------------------------------------------------------

    @staticmethod
    def format_of(formats: Sequence[int], index: int, count: int) -> int:
        if len(formats) not in (0, 1, count):
            raise SQLError("08P01", f"bind message has {len(formats)} result formats but "
                           f"query has {count} columns")
        code = (formats[0] if len(formats) == 1 else formats[index]) if formats else 0
        if code not in (0, 1):
            raise SQLError("22023", f"unsupported format code: {code}")
        return code

    def row_description(self, columns: list[tuple[str, int]], formats: Sequence[int]
                        ) -> pw.RowDescription:
        return pw.RowDescription(fields=tuple(
            pw.FieldDescription(name=name, data_type_oid=oid, data_type_size=TYPE_SIZES[oid],
                                format=self.format_of(formats, i, len(columns)))
            for i, (name, oid) in enumerate(columns)))

    def data_row(self, columns: list[tuple[str, int]], row: Sequence[Any],
                 formats: Sequence[int]) -> pw.DataRow:
        return pw.DataRow(values=tuple(
            None if value is None else
            binary_value(value, oid) if self.format_of(formats, i, len(columns)) == 1 else
            text_value(value, oid).encode()
            for i, ((_, oid), value) in enumerate(zip(columns, row, strict=True))))


# -- sockets and threads --------------------------------------------------------------------


class SQLiteServer:
    """Serve one SQLite database on a loopback port, one thread per client.

    ``database``: a file path, or ``:memory:`` for an in-memory database that
    lives as long as the server. ``port=0`` picks a free port (see
    :attr:`port` after :meth:`start`). Usable as a context manager.
    """

    _names = itertools.count()

    def __init__(self, database: str = ":memory:", host: str = "127.0.0.1", port: int = 0, *,
                 max_message_size: int = pw.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if database == ":memory:":
            self.target = f"file:pgwire-sqlite-{next(self._names)}?mode=memory&cache=shared"
        else:
            self.target = f"file:{database}"
        self.max_message_size = max_message_size
        # Keeps a shared in-memory database alive while no client is connected.
        self.keeper = self.connect(check_same_thread=False)
        self.listener = socket.create_server((host, port))
        self.errors: list[BaseException] = []     # exceptions that escaped a session (bugs)
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process_ids = itertools.count(1000)

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def connect(self, **options: Any) -> sqlite3.Connection:
        # isolation_level=None: SQLite sees BEGIN and COMMIT exactly when the client sends them.
        db: sqlite3.Connection = sqlite3.connect(
            self.target, uri=True, isolation_level=None, timeout=1.0,
            detect_types=sqlite3.PARSE_DECLTYPES, **options)
        return db

    def start(self) -> SQLiteServer:
        self._thread = threading.Thread(target=self._accept, name="sqlite-server", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return          # stop() closed the listener
            with self._lock:
                self._clients.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        db = self.connect()
        session = SQLiteSession(db, process_id=next(self._process_ids),
                                max_message_size=self.max_message_size)
        try:
            with sock:
                while not session.closed:
                    data = sock.recv(65536)
                    sock.sendall(session.receive_data(data))
                    if not data:
                        break
        except OSError:
            pass            # the client vanished, or stop() shut its socket
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            db.close()      # rolls back whatever transaction the client left open
            with self._lock:
                self._clients.discard(sock)

    def stop(self) -> None:
        """Stop accepting and hang up on every client."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes the thread blocked in accept()
        self.listener.close()
        with self._lock:
            for sock in self._clients:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
        self.keeper.close()

    def __enter__(self) -> SQLiteServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:5433", help="host:port to accept on")
    parser.add_argument("--database", default=":memory:", help="SQLite file (default: memory)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    # Block the stop signals before any thread starts, so only sigwait below sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with SQLiteServer(args.database, host or "127.0.0.1", int(port)) as server:
        print(f"listening on {host}:{server.port} (SQLite {sqlite3.sqlite_version}, "
              f"database {args.database})", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
