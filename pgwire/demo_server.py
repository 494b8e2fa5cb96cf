"""An in-memory PostgreSQL-compatible server, for demos and for testing real clients.

:class:`DemoServer` listens on a loopback port and answers a small subset of SQL
from memory: ``select 1``, ``select version()``, ``show server_version``,
``select * from users`` (a read-only table of three rows, with a NULL and
non-ASCII text), ``select current_user``, ``SET``/``RESET``/``SHOW``,
``DEALLOCATE`` (psycopg sends it), and ``BEGIN``/``COMMIT``/``ROLLBACK`` with the
transaction status tracked in ReadyForQuery. Select lists take integer and string literals, ``$n``
parameters, ``::`` casts to int2/int4/int8/text/varchar/bool, aliases and
``where column = value`` on ``users``. Anything else gets the ErrorResponse
PostgreSQL would send — 42601 syntax error, 42P01 undefined table, 42703
undefined column, with the character position.

It speaks enough of the protocol for psql, libpq (psycopg 3), asyncpg and
pg8000: SSLRequest answered 'N', trust or cleartext-password authentication,
the ParameterStatus set drivers read, BackendKeyData, NegotiateProtocolVersion
when asked for a newer minor version, multi-statement simple queries, the
extended protocol (named and unnamed statements and portals, Describe,
``Execute`` row limits with PortalSuspended, Close, Flush, skip-to-Sync after
an error), text results and binary results for the four built-in types
drivers know without asking the catalog (int4 23, int8 20, text 25, bool 16,
plus int2 21). CancelRequest is accepted and recorded, then ignored.

Why it is package code: ``pgwire demo`` (:mod:`pgwire.cli`) runs it, and the
package cannot import the repository's ``examples/`` directory. The example
``examples/fake_server.py`` is a one-page server of its own that shows the bare
pattern; this module is the complete version.

Three layers, top to bottom in this file: the SQL subset (a lexer and a small
planner), :class:`DemoSession` (sans-IO: one client's bytes in, bytes out,
driving a :class:`pgwire.Backend`), and :class:`DemoServer` (a listening socket
and one thread per client).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, NoReturn

from .protocol import (
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    Backend,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    ConnectionClosed,
    CopyData,
    CopyDone,
    CopyFail,
    DataRow,
    Describe,
    DirectTLSHandshake,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    GSSENCRequest,
    GSSENCResponse,
    LocalProtocolError,
    Message,
    NoData,
    NoticeResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    TransactionStatus,
    error_response,
)

__all__ = ["USERS", "DemoServer", "DemoSession", "SQLError"]

SERVER_VERSION: Final = "15.0"
VERSION_STRING: Final = "PostgreSQL 15.0 (pgwire demo server, in memory)"

# ---------------------------------------------------------------------------
# Types and values
# ---------------------------------------------------------------------------

#: A SQL value as the demo server holds it.
Value = int | str | bool | None


@dataclass(frozen=True, slots=True)
class PgType:
    """A PostgreSQL data type: OID, the name a bare cast gives its column, typlen."""

    oid: int
    name: str
    size: int


BOOL: Final = PgType(16, "bool", 1)
INT8: Final = PgType(20, "int8", 8)
INT2: Final = PgType(21, "int2", 2)
INT4: Final = PgType(23, "int4", 4)
TEXT: Final = PgType(25, "text", -1)
UNKNOWN: Final = PgType(705, "unknown", -2)
VARCHAR: Final = PgType(1043, "varchar", -1)

TYPES_BY_OID: Final = {t.oid: t for t in (BOOL, INT8, INT2, INT4, TEXT, UNKNOWN, VARCHAR)}
TYPES_BY_NAME: Final = {
    "bool": BOOL, "boolean": BOOL, "int8": INT8, "bigint": INT8, "int2": INT2,
    "smallint": INT2, "int4": INT4, "int": INT4, "integer": INT4, "text": TEXT,
    "varchar": VARCHAR,
}
_INTEGERS: Final = {INT2: ("smallint", 16, "!h"), INT4: ("integer", 32, "!i"),
                    INT8: ("bigint", 64, "!q")}


class SQLError(Exception):
    """An error the demo server reports to the client as an ErrorResponse.

    ``position`` is PostgreSQL's: a 1-based character index into the query string.
    """

    def __init__(self, code: str, message: str, *, position: int | None = None,
                 hint: str | None = None, severity: str = "ERROR") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.position = position
        self.hint = hint
        self.severity = severity

    def response(self) -> ErrorResponse:
        """The ErrorResponse PostgreSQL would send for this error."""
        return ErrorResponse(
            severity=self.severity, severity_nonlocalized=self.severity, code=self.code,
            message=self.message, hint=self.hint,
            position=None if self.position is None else str(self.position),
        )


def _parse_integer(text: str, target: PgType) -> int:
    type_name = _INTEGERS[target][0]
    try:
        number = int(text.strip(), 10)
    except ValueError:
        raise SQLError("22P02", f'invalid input syntax for type {type_name}: "{text}"') from None
    return _check_range(number, target)


def _check_range(number: int, target: PgType) -> int:
    type_name, bits, _ = _INTEGERS[target]
    if not -(1 << (bits - 1)) <= number < 1 << (bits - 1):
        raise SQLError("22003", f"{type_name} out of range")
    return number


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    # As PostgreSQL: any prefix of true/false/yes/no, on/of(f), 1/0 ("o" is ambiguous).
    if word and ("true".startswith(word) or "yes".startswith(word) or word in ("on", "1")):
        return True
    if word and ("false".startswith(word) or "no".startswith(word) or word in ("of", "off", "0")):
        return False
    raise SQLError("22P02", f'invalid input syntax for type boolean: "{text}"')


def cast(value: Value, target: PgType) -> Value:
    """Convert ``value`` to ``target`` as a SQL cast does (strings are parsed)."""
    if value is None:
        return None
    if target in (TEXT, VARCHAR, UNKNOWN):
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if target == BOOL:
        if isinstance(value, bool):
            return value
        return value != 0 if isinstance(value, int) else _parse_bool(value)
    if target in _INTEGERS:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return _check_range(value, target)
        return _parse_integer(value, target)
    # A client-declared type the server does not model: keep the text.
    return value if isinstance(value, str) else str(value)


def text_output(value: Value) -> str:
    """The text format of a value (booleans are ``t``/``f`` as in PostgreSQL)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def binary_output(value: Value, value_type: PgType, encoding: str) -> bytes:
    """The binary format of a value of one of the supported types."""
    if value_type in _INTEGERS:
        assert isinstance(value, int)
        return struct.pack(_INTEGERS[value_type][2], value)
    if value_type == BOOL:
        return b"\x01" if value else b"\x00"
    if value_type in (TEXT, VARCHAR, UNKNOWN):
        return str(value).encode(encoding)
    raise SQLError("0A000", f"binary output of type {value_type.name} is not supported by the "
                   "demo server; ask for text results")


def parameter_input(data: bytes, format_code: int, value_type: PgType, encoding: str,
                    number: int) -> Value:
    """Decode bind parameter ``$number`` from the wire (text or binary format)."""
    if format_code == 0 or value_type in (TEXT, VARCHAR, UNKNOWN):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            raise SQLError("22021", f"invalid byte sequence in bind parameter ${number} for "
                           f"encoding {encoding}") from None
        if value_type in _INTEGERS or value_type == BOOL:
            return cast(text, value_type)
        return text
    if value_type in _INTEGERS:
        layout = struct.Struct(_INTEGERS[value_type][2])
        if len(data) != layout.size:
            raise SQLError("22P03", f"incorrect binary data format in bind parameter {number}")
        value: int = layout.unpack(data)[0]
        return value
    if value_type == BOOL:
        if len(data) != 1:
            raise SQLError("22P03", f"incorrect binary data format in bind parameter {number}")
        return data != b"\x00"
    raise SQLError("0A000", f"binary input of type {value_type.name} (parameter ${number}) is "
                   "not supported by the demo server; send it in text format")


# ---------------------------------------------------------------------------
# The data: one read-only table
# ---------------------------------------------------------------------------

#: The columns of the ``users`` table.
USERS_COLUMNS: Final = (("id", INT4), ("name", TEXT), ("email", TEXT), ("active", BOOL))
#: The rows of the ``users`` table: a NULL email, and names outside ASCII.
USERS: Final[tuple[tuple[Value, ...], ...]] = (
    (1, "alice", "alice@example.com", True),
    (2, "Zoë", None, False),
    (3, "Ünal 宮本", "unal@example.jp", True),
)
USERS_TABLE_OID: Final = 16390

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------

# name -> (default value, reported with ParameterStatus, settable)
_SETTINGS: Final[dict[str, tuple[str, bool, bool]]] = {
    "application_name": ("", True, True),
    "client_encoding": ("UTF8", True, True),
    "DateStyle": ("ISO, MDY", True, True),
    "default_transaction_read_only": ("off", True, True),
    "in_hot_standby": ("off", True, False),
    "integer_datetimes": ("on", True, False),
    "IntervalStyle": ("postgres", True, True),
    "is_superuser": ("off", True, False),
    "search_path": ('"$user", public', False, True),
    "server_encoding": ("UTF8", True, False),
    "server_version": (SERVER_VERSION, True, False),
    "server_version_num": ("150000", False, False),
    "session_authorization": ("", True, False),
    "standard_conforming_strings": ("on", True, True),
    "statement_timeout": ("0", False, True),
    "TimeZone": ("UTC", True, True),
}
_CANONICAL: Final = {name.lower(): name for name in _SETTINGS}
_ENCODINGS: Final = {"UTF8": "UTF8", "UNICODE": "UTF8", "SQLASCII": "SQL_ASCII",
                     "LATIN1": "LATIN1", "WIN1252": "WIN1252"}


def _canonical_encoding(name: str) -> str:
    canonical = _ENCODINGS.get(name.strip("'").upper().replace("-", "").replace("_", ""))
    if canonical is None:
        raise SQLError("22023", f'invalid value for parameter "client_encoding": "{name}"',
                       hint=f"The demo server knows {', '.join(sorted(set(_ENCODINGS.values())))}.")
    return canonical


# ---------------------------------------------------------------------------
# SQL: lexer
# ---------------------------------------------------------------------------

_TOKEN: Final = re.compile(
    r"""
      (?P<space>\s+|--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^']|'')*')
    | (?P<unterminated>'.*)
    | (?P<quoted>"(?:[^"]|"")+")
    | (?P<param>\$[0-9]+)
    | (?P<number>[0-9]+)
    | (?P<word>[^\W\d]\w*)
    | (?P<op>::|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical token: kind, text as written, value, 1-based character position."""

    kind: str  # word, quoted, string, number, param or op
    text: str
    value: str  # words lowercased, quoted identifiers and strings unescaped
    position: int


def tokenize(sql: str) -> list[Token]:
    """Split ``sql`` into tokens; raise SQLError for an unterminated string."""
    tokens: list[Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        position = match.start() + 1
        if kind == "space":
            continue
        if kind == "unterminated":
            raise SQLError("42601", f'unterminated quoted string at or near "{text}"',
                           position=position)
        if kind == "word":
            value = text.lower()
        elif kind == "string":
            value = text[1:-1].replace("''", "'")
        elif kind == "quoted":
            value = text[1:-1].replace('""', '"')
        else:
            value = text
        assert kind is not None
        tokens.append(Token(kind, text, value, position))
    return tokens


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a query string: its tokens and what ends it."""

    tokens: tuple[Token, ...]
    terminator: Token | None  # the ';', or None at the end of the string
    end_position: int  # position PostgreSQL reports for "at end of input"


def split_statements(sql: str) -> list[Statement]:
    """The non-empty statements of ``sql``, split at semicolons."""
    statements: list[Statement] = []
    current: list[Token] = []
    for token in tokenize(sql):
        if token.kind == "op" and token.text == ";":
            if current:
                statements.append(Statement(tuple(current), token, len(sql) + 1))
            current = []
        else:
            current.append(token)
    if current:
        statements.append(Statement(tuple(current), None, len(sql) + 1))
    return statements


# ---------------------------------------------------------------------------
# SQL: plans
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What an expression can see: the session's user, the parameters, the row."""

    user: str
    database: str
    parameters: Sequence[Value]
    row: Sequence[Value]


Evaluator = Callable[[EvalContext], Value]


@dataclass(frozen=True, slots=True)
class Column:
    """An output column: name, type and how to compute it."""

    name: str
    type: PgType
    evaluate: Evaluator
    #: Attribute number in ``users`` when the column is one of its columns, else 0.
    table_column: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """A planned statement: ``kind`` is select, show, set, begin, commit, rollback or
    deallocate; ``setting`` names the setting (SET, SHOW) or statement (DEALLOCATE)."""

    kind: str
    tag: str
    columns: tuple[Column, ...] = ()
    parameter_types: tuple[PgType, ...] = ()
    from_users: bool = False
    where: tuple[int, Evaluator] | None = None
    setting: str = ""
    value: str | None = None  # for SET; None resets to the default

    @property
    def returns_rows(self) -> bool:
        """SELECT and SHOW send a RowDescription, even with no columns."""
        return self.kind in ("select", "show")

    @property
    def ends_transaction(self) -> bool:
        """COMMIT or ROLLBACK: the only statements a failed transaction accepts."""
        return self.kind in ("commit", "rollback")


_RESERVED: Final = frozenset((
    "all", "and", "any", "as", "asc", "by", "case", "desc", "distinct", "else", "end",
    "except", "false", "fetch", "for", "from", "group", "having", "in", "intersect", "into",
    "is", "join", "limit", "not", "null", "offset", "on", "or", "order", "select", "table",
    "then", "true", "union", "user", "using", "when", "where", "window", "with",
))
_SESSION_FUNCTIONS: Final = ("current_user", "session_user", "current_role", "user")
_SUBSET_HINT: Final = ("The pgwire demo server understands only a small subset of SQL: "
                       "see pgwire/demo_server.py.")


class _Parser:
    """Recursive descent over one statement's tokens, producing a :class:`Plan`.

    Syntax is checked before meaning, as in PostgreSQL: a statement with a typo
    reports the typo even if it also names a table that does not exist.
    """

    def __init__(self, statement: Statement, declared_types: Sequence[int] | None) -> None:
        self.statement = statement
        self.tokens = statement.tokens
        self.index = 0
        # None: a simple Query, where $n is an error; else the types Parse declared.
        self.declared_types = declared_types
        self.inferred: dict[int, PgType] = {}
        self.max_parameter = 0

    # -- token helpers -------------------------------------------------------

    def peek(self, offset: int = 0) -> Token | None:
        index = self.index + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def advance(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.syntax_error()
        self.index += 1
        return token

    def accept(self, *words: str) -> Token | None:
        token = self.peek()
        if token is not None and token.kind in ("word", "op") and token.value in words:
            self.index += 1
            return token
        return None

    def expect(self, *words: str) -> Token:
        token = self.accept(*words)
        if token is None:
            raise self.syntax_error()
        return token

    def expect_end(self) -> None:
        if self.peek() is not None:
            raise self.syntax_error()

    def syntax_error(self) -> SQLError:
        token = self.peek() or self.statement.terminator
        if token is None:
            return SQLError("42601", "syntax error at end of input",
                            position=self.statement.end_position, hint=_SUBSET_HINT)
        return SQLError("42601", f'syntax error at or near "{token.text}"',
                        position=token.position, hint=_SUBSET_HINT)

    def identifier(self) -> Token:
        token = self.peek()
        if token is None or token.kind not in ("word", "quoted"):
            raise self.syntax_error()
        self.index += 1
        return token

    # -- statements ------------------------------------------------------------

    def plan(self) -> Plan:
        first = self.peek()
        assert first is not None
        if first.kind != "word":
            raise self.syntax_error()
        self.index += 1
        verb = first.value
        if verb == "select":
            plan = self.select()
        elif verb == "show":
            plan = self.show()
        elif verb in ("set", "reset"):
            plan = self.set(reset=verb == "reset")
        elif verb in ("begin", "start"):
            if verb == "start":
                self.expect("transaction")
            else:
                self.accept("work", "transaction")
            self.index = len(self.tokens)  # isolation levels and modes are accepted as is
            plan = Plan("begin", "START TRANSACTION" if verb == "start" else "BEGIN")
        elif verb in ("commit", "end", "rollback", "abort"):
            self.accept("work", "transaction")
            self.expect_end()
            kind = "commit" if verb in ("commit", "end") else "rollback"
            plan = Plan(kind, kind.upper())
        elif verb == "deallocate":
            # psycopg sends DEALLOCATE ALL after a rollback when it has prepared statements.
            self.accept("prepare")
            name = self.identifier().value
            self.expect_end()
            plan = Plan("deallocate", "DEALLOCATE ALL" if name == "all" else "DEALLOCATE",
                        setting=name)
        elif verb in ("insert", "update", "delete"):
            self.write()
        else:
            raise SQLError("42601", f'syntax error at or near "{first.text}"',
                           position=first.position)
        return plan

    def write(self) -> NoReturn:
        """INSERT INTO, UPDATE, DELETE FROM: only ``users`` exists, and it is read-only."""
        verb = self.tokens[0].value
        if verb != "update":
            self.expect("into" if verb == "insert" else "from")
        token = self.identifier()
        if token.value != "users":
            raise _missing_table(token)
        raise SQLError("42501", "permission denied for table users",
                       hint="The demo server's table is read-only.")

    def select(self) -> Plan:
        items: list[tuple[Token | None, _Expression | None, str | None]] = []
        if self.peek() is not None and not self.accept_lookahead("from"):
            while True:
                star = self.accept("*")
                if star is not None:
                    items.append((star, None, None))
                else:
                    expression = self.expression()
                    alias: str | None = None
                    if self.accept("as"):
                        alias = self.identifier().value
                    else:
                        token = self.peek()
                        if token is not None and (
                            token.kind == "quoted"
                            or (token.kind == "word" and token.value not in _RESERVED)
                        ):
                            alias = self.identifier().value
                    items.append((None, expression, alias))
                if not self.accept(","):
                    break
        table: Token | None = None
        if self.accept("from"):
            table = self.identifier()
        where: tuple[Token, _Expression] | None = None
        if self.accept("where"):
            column_token = self.identifier()
            self.expect("=")
            where = (column_token, self.expression())
            index = _users_column_index(column_token)
            if isinstance(where[1], _Parameter) and index >= 0:
                self.infer(where[1].number, USERS_COLUMNS[index][1])
        self.expect_end()
        # Syntax is fine; now meaning, the table first as in PostgreSQL.
        if table is not None and table.value != "users":
            raise _missing_table(table)
        from_users = table is not None
        columns: list[Column] = []
        for star, item, alias in items:
            if star is not None:
                if not from_users:
                    raise SQLError("42601", "SELECT * with no tables specified is not valid",
                                   position=star.position)
                columns.extend(_users_column(index) for index in range(len(USERS_COLUMNS)))
                continue
            assert item is not None
            column = item.resolve(self, from_users)
            columns.append(column if alias is None else Column(alias, column.type,
                                                                column.evaluate))
        where_plan: tuple[int, Evaluator] | None = None
        if where is not None:
            column_token, expression = where
            index = _users_column_index(column_token) if from_users else -1
            if index < 0:
                raise SQLError("42703", f'column "{column_token.value}" does not exist',
                               position=column_token.position)
            right = expression.resolve(self, from_users)
            where_plan = (index, _cast_evaluator(right.evaluate, USERS_COLUMNS[index][1], None))
        return Plan("select", "SELECT", tuple(columns), self.parameter_types(), from_users,
                    where_plan)

    def accept_lookahead(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.value == word

    def show(self) -> Plan:
        token = self.identifier()
        name = token.value
        while self.accept("."):
            name += "." + self.identifier().value
        self.expect_end()
        if name == "all":
            columns = (Column("name", TEXT, lambda c: c.row[0]),
                       Column("setting", TEXT, lambda c: c.row[1]))
            return Plan("show", "SHOW", columns, setting="all")
        canonical = _CANONICAL.get(name, name)
        return Plan("show", "SHOW", (Column(canonical, TEXT, lambda c: c.row[0]),),
                    setting=canonical)

    def set(self, *, reset: bool) -> Plan:
        if not reset:
            self.accept("session", "local")
        token = self.identifier()
        name = token.value
        while self.accept("."):
            name += "." + self.identifier().value
        canonical = _CANONICAL.get(name, name)
        value: str | None = None
        if not reset:
            self.expect("=", "to")
            if self.accept("default") is None:
                parts: list[str] = []
                while True:
                    sign = "-" if self.accept("-") else ""
                    part = self.advance()
                    if part.kind not in ("word", "quoted", "string", "number"):
                        self.index -= 1
                        raise self.syntax_error()
                    parts.append(sign + (part.text if part.kind == "word" else part.value))
                    if not self.accept(","):
                        break
                value = ", ".join(parts)
        self.expect_end()
        if canonical in _SETTINGS and not _SETTINGS[canonical][2]:
            raise SQLError("55P02", f'parameter "{canonical}" cannot be changed')
        if canonical == "client_encoding" and value is not None:
            value = _canonical_encoding(value)
        return Plan("set", "RESET" if reset else "SET", setting=canonical, value=value)

    # -- expressions -------------------------------------------------------------

    def expression(self) -> _Expression:
        expression = self.primary()
        while self.accept("::"):
            type_token = self.identifier()
            target = TYPES_BY_NAME.get(type_token.value)
            if isinstance(expression, _Parameter) and target is not None:
                self.infer(expression.number, target)
            expression = _Cast(expression, type_token)
        return expression

    def primary(self) -> _Expression:
        token = self.advance()
        if token.kind == "op" and token.text == "-":
            digits = self.peek()
            if digits is None or digits.kind != "number":
                raise self.syntax_error()
            self.index += 1
            return _Constant(token, -int(digits.text))
        if token.kind == "op" and token.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if token.kind == "number":
            return _Constant(token, int(token.text))
        if token.kind == "string":
            return _Constant(token, token.value)
        if token.kind == "param":
            number = int(token.text[1:])
            if self.declared_types is None or number < 1:
                raise SQLError("42P02", f"there is no parameter ${number}",
                               position=token.position)
            self.max_parameter = max(self.max_parameter, number)
            return _Parameter(token, number)
        if token.kind == "word" and token.value in ("true", "false"):
            return _Constant(token, token.value == "true")
        if token.kind == "word" and token.value == "null":
            return _Constant(token, None)
        if token.kind == "word" and token.value in _SESSION_FUNCTIONS:
            return _Name(token)
        if token.kind == "word" and token.value in _RESERVED:
            self.index -= 1
            raise self.syntax_error()
        if token.kind in ("word", "quoted"):
            if token.kind == "word" and self.accept("("):
                self.expect(")")
                return _Call(token)
            return _Name(token)
        self.index -= 1
        raise self.syntax_error()

    # -- parameters -----------------------------------------------------------------

    def declared(self, number: int) -> PgType | None:
        declared = self.declared_types or ()
        if number <= len(declared) and declared[number - 1] != 0:
            oid = declared[number - 1]
            known = TYPES_BY_OID.get(oid)
            if known is None:
                raise SQLError("0A000", f"parameter ${number} has type OID {oid}, which the "
                               "demo server does not support",
                               hint="Use int2, int4, int8, text, varchar or bool parameters, "
                               "or leave the type unspecified (0).")
            return known
        return None

    def infer(self, number: int, value_type: PgType) -> None:
        if self.declared(number) is None:
            self.inferred.setdefault(number, value_type)

    def parameter_type(self, number: int) -> PgType:
        declared = self.declared(number)
        if declared is not None:
            return declared
        # As in PostgreSQL 10+, a parameter nothing constrains is text.
        return self.inferred.get(number, TEXT)

    def parameter_types(self) -> tuple[PgType, ...]:
        count = max(self.max_parameter, len(self.declared_types or ()))
        return tuple(self.parameter_type(n) for n in range(1, count + 1))


def _users_column_index(token: Token) -> int:
    for index, (name, _) in enumerate(USERS_COLUMNS):
        if name == token.value:
            return index
    return -1


def _users_column(index: int) -> Column:
    name, column_type = USERS_COLUMNS[index]
    return Column(name, column_type, lambda c: c.row[index], table_column=index + 1)


def _missing_table(token: Token) -> SQLError:
    return SQLError("42P01", f'relation "{token.value}" does not exist', position=token.position)


def _cast_evaluator(evaluate: Evaluator, target: PgType, position: int | None) -> Evaluator:
    def evaluate_cast(context: EvalContext) -> Value:
        try:
            return cast(evaluate(context), target)
        except SQLError as exc:
            if position is not None and exc.position is None:
                exc.position = position
            raise
    return evaluate_cast


@dataclass(frozen=True, slots=True)
class _Constant:
    token: Token
    value: Value

    def resolve(self, parser: _Parser, from_users: bool) -> Column:
        value = self.value
        if isinstance(value, bool):
            value_type = BOOL
        elif isinstance(value, int):
            value_type = INT4 if -(1 << 31) <= value < 1 << 31 else INT8
            if not -(1 << 63) <= value < 1 << 63:
                raise SQLError("0A000", "numeric values are not supported by the demo server",
                               position=self.token.position)
        else:
            value_type = UNKNOWN
        return Column("?column?", value_type, lambda c: value)


@dataclass(frozen=True, slots=True)
class _Parameter:
    token: Token
    number: int

    def resolve(self, parser: _Parser, from_users: bool) -> Column:
        index = self.number - 1
        return Column("?column?", parser.parameter_type(self.number),
                      lambda c: c.parameters[index])


@dataclass(frozen=True, slots=True)
class _Name:
    token: Token

    def resolve(self, parser: _Parser, from_users: bool) -> Column:
        name = self.token.value
        if self.token.kind == "word" and name in _SESSION_FUNCTIONS:
            # No SET ROLE here, so the current user is always the session user.
            return Column("current_user" if name == "user" else name, TEXT, lambda c: c.user)
        index = _users_column_index(self.token) if from_users else -1
        if index < 0:
            raise SQLError("42703", f'column "{name}" does not exist',
                           position=self.token.position)
        return _users_column(index)


@dataclass(frozen=True, slots=True)
class _Call:
    token: Token

    def resolve(self, parser: _Parser, from_users: bool) -> Column:
        name = self.token.value
        if name == "version":
            return Column("version", TEXT, lambda c: VERSION_STRING)
        if name == "current_database":
            return Column("current_database", TEXT, lambda c: c.database)
        raise SQLError("42883", f"function {name}() does not exist", position=self.token.position,
                       hint="No function matches the given name and argument types. You might "
                       "need to add explicit type casts.")


@dataclass(frozen=True, slots=True)
class _Cast:
    operand: _Expression
    type_token: Token

    def resolve(self, parser: _Parser, from_users: bool) -> Column:
        target = TYPES_BY_NAME.get(self.type_token.value)
        if target is None:
            raise SQLError("42704", f'type "{self.type_token.value}" does not exist',
                           position=self.type_token.position)
        inner = self.operand.resolve(parser, from_users)
        # PostgreSQL names a cast column after its operand when that has a name.
        name = inner.name if inner.name != "?column?" else target.name
        position = self.operand.token.position if isinstance(self.operand, _Constant) else None
        return Column(name, target, _cast_evaluator(inner.evaluate, target, position),
                      inner.table_column)


_Expression = _Constant | _Parameter | _Name | _Call | _Cast


def plan_statement(statement: Statement, declared_types: Sequence[int] | None = None) -> Plan:
    """Plan one statement. ``declared_types`` are the parameter type OIDs of a
    Parse (0 = unspecified); ``None`` means a simple Query, where ``$n`` is an error."""
    return _Parser(statement, declared_types).plan()


# ---------------------------------------------------------------------------
# One client connection, sans-IO
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class PreparedStatement:
    """A statement created by Parse: its plan (None for an empty query)."""

    plan: Plan | None
    parameter_types: tuple[PgType, ...]


@dataclass(slots=True)
class Portal:
    """A portal created by Bind; ``rows`` is filled by its first Execute."""

    statement: PreparedStatement
    parameters: tuple[Value, ...]
    result_formats: tuple[int, ...]
    rows: list[tuple[Value, ...]] | None = None
    sent: int = 0
    tag: str = ""


@dataclass(slots=True)
class _Result:
    rows: list[tuple[Value, ...]] = field(default_factory=list)
    tag: str = ""


class DemoSession:
    """The server side of one client connection, without I/O.

    Feed :meth:`receive_data` the bytes read from the client (``b""`` at end
    of stream) and write back the bytes it returns; stop when :attr:`closed`.
    A :class:`pgwire.Backend` checks every message in both directions, so a
    bug here that breaks the protocol raises :class:`pgwire.LocalProtocolError`
    instead of confusing the client.

    ``password``: ask for it in cleartext (None: trust). ``log`` receives
    one line per message in each direction. ``on_cancel`` is called with each
    CancelRequest, which is otherwise ignored.
    """

    def __init__(
        self,
        *,
        process_id: int = 1,
        password: str | None = None,
        log: Callable[[str], None] | None = None,
        on_cancel: Callable[[CancelRequest], None] | None = None,
    ) -> None:
        self.backend = Backend()
        self.process_id = process_id
        self.password = password
        self.log = log
        self.on_cancel = on_cancel
        self.closed = False
        self.user = ""
        self.database = ""
        self.settings: dict[str, str] = {name: spec[0] for name, spec in _SETTINGS.items()}
        self.status = TransactionStatus.IDLE
        self.statements: dict[str, PreparedStatement] = {}
        self.portals: dict[str, Portal] = {}
        self._skip_to_sync = False
        self._out = bytearray()

    # -- bytes in, bytes out -----------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Process bytes from the client; return the bytes to send back."""
        if self.closed:
            return b""
        self.backend.receive_data(data)
        while not self.closed:
            try:
                event = self.backend.next_event()
            except RemoteProtocolError as exc:
                self._log(f"client broke the protocol: {exc}")
                self._fatal(error_response(exc))
                break
            if event is NEED_DATA:
                break
            self._log(f"C> {event!r}")
            self._dispatch(event)
        out = bytes(self._out)
        self._out.clear()
        return out

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(f"[{self.process_id}] {line}")

    def _send(self, message: Message) -> None:
        self._out += self.backend.send(message)
        self._log(f"S> {message!r}")

    def _fatal(self, error: ErrorResponse) -> None:
        # When the phase allows no ErrorResponse (after a CancelRequest), just close.
        with contextlib.suppress(LocalProtocolError):
            self._send(error)
        self.closed = True

    @property
    def text_encoding(self) -> str:
        """The codec for text values: the client's, except SQL_ASCII passes UTF-8 through."""
        if self.settings["client_encoding"] == "SQL_ASCII":
            return "utf-8"
        return self.backend.encoding

    # -- dispatch -----------------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        if isinstance(event, SSLRequest):
            self._send(SSLResponse(accepted=False))
        elif isinstance(event, GSSENCRequest):
            self._send(GSSENCResponse(accepted=False))
        elif isinstance(event, CancelRequest):
            if self.on_cancel is not None:
                self.on_cancel(event)
            self.closed = True
        elif isinstance(event, StartupMessage):
            self._startup(event)
        elif isinstance(event, PasswordMessage):
            self._check_password(event)
        elif isinstance(event, Query):
            self._simple_query(event.query)
        elif isinstance(event, (Parse, Bind, Describe, Execute, Close)):
            if self._skip_to_sync:
                return
            try:
                self._extended(event)
            except SQLError as exc:
                self._error(exc)
                self._skip_to_sync = True
        elif isinstance(event, Sync):
            self._sync()
        elif isinstance(event, FunctionCall):
            self._error(SQLError("0A000", "the demo server does not support function calls"))
            self._send(ReadyForQuery(status=self.status))
        elif isinstance(event, (Terminate, ConnectionClosed, DirectTLSHandshake)):
            # Direct TLS needs certificates this demo does not have: hang up.
            self.closed = True
        else:
            # Flush: output is written after every read anyway. Copy messages
            # outside COPY: PostgreSQL ignores them too.
            assert isinstance(event, (Flush, CopyData, CopyDone, CopyFail)), event

    # -- start-up -------------------------------------------------------------------

    def _startup(self, startup: StartupMessage) -> None:
        negotiation = self.backend.protocol_negotiation
        if negotiation is not None:
            self._send(negotiation)
        self.user = startup.get("user") or ""
        self.database = startup.get("database") or self.user
        self.settings["session_authorization"] = self.user
        for name, given in startup.as_dict().items():
            canonical = _CANONICAL.get(name.lower())
            if canonical is None or not _SETTINGS[canonical][2]:
                continue  # user, database, options, replication, unknown names
            value = given
            if canonical == "client_encoding":
                try:
                    value = _canonical_encoding(given)
                except SQLError as exc:
                    self._fatal(SQLError(exc.code, exc.message, severity="FATAL").response())
                    return
            self.settings[canonical] = value
        if self.password is not None:
            self._send(AuthenticationCleartextPassword())
        else:
            self._login()

    def _check_password(self, message: PasswordMessage) -> None:
        assert self.password is not None
        if secrets.compare_digest(message.password, self.password.encode()):
            self._login()
        else:
            self._fatal(SQLError("28P01", f'password authentication failed for user "{self.user}"',
                                 severity="FATAL").response())

    def _login(self) -> None:
        self._send(AuthenticationOk())
        for name, (_, reported, _) in _SETTINGS.items():
            if reported:
                self._send(ParameterStatus(name=name, value=self.settings[name]))
        # Protocol 3.2 allows long cancel keys; 3.0 requires exactly four bytes.
        key_length = 32 if self.backend.protocol_version & 0xFFFF >= 2 else 4
        self._send(BackendKeyData(process_id=self.process_id,
                                  secret_key=secrets.token_bytes(key_length)))
        self._send(ReadyForQuery(status=self.status))

    # -- simple query ----------------------------------------------------------------

    def _simple_query(self, sql: str) -> None:
        self.statements.pop("", None)  # a Query destroys the unnamed statement and portal
        self.portals.pop("", None)
        try:
            statements = split_statements(sql)
            if not statements:
                self._send(EmptyQueryResponse())
            for statement in statements:
                plan = plan_statement(statement)
                self._check_not_aborted(plan)
                result = self._run(plan, ())
                if plan.returns_rows:
                    self._send(self._row_description(plan.columns, ()))
                for row in result.rows:
                    self._send(self._data_row(plan.columns, row, ()))
                self._send(CommandComplete(tag=result.tag))
        except SQLError as exc:
            self._error(exc)
        self._send(ReadyForQuery(status=self.status))

    def _error(self, exc: SQLError) -> None:
        self._send(exc.response())
        if self.status is TransactionStatus.IN_TRANSACTION:
            self.status = TransactionStatus.FAILED

    def _check_not_aborted(self, plan: Plan | None) -> None:
        if self.status is TransactionStatus.FAILED and not (plan and plan.ends_transaction):
            raise SQLError("25P02", "current transaction is aborted, commands ignored until end "
                           "of transaction block")

    # -- extended query ------------------------------------------------------------

    def _extended(self, message: Parse | Bind | Describe | Execute | Close) -> None:
        if isinstance(message, Parse):
            self._parse(message)
        elif isinstance(message, Bind):
            self._bind(message)
        elif isinstance(message, Describe):
            self._describe(message)
        elif isinstance(message, Execute):
            self._execute(message)
        else:
            if message.kind == "S":
                self.statements.pop(message.name, None)
            else:
                self.portals.pop(message.name, None)
            self._send(CloseComplete())

    def _parse(self, message: Parse) -> None:
        if message.statement and message.statement in self.statements:
            raise SQLError("42P05", f'prepared statement "{message.statement}" already exists')
        statements = split_statements(message.query)
        if len(statements) > 1:
            raise SQLError("42601", "cannot insert multiple commands into a prepared statement")
        plan = plan_statement(statements[0], message.parameter_types) if statements else None
        self._check_not_aborted(plan)
        parameter_types = plan.parameter_types if plan else tuple(
            TYPES_BY_OID.get(oid, TEXT) for oid in message.parameter_types
        )
        self.statements[message.statement] = PreparedStatement(plan, parameter_types)
        self._send(ParseComplete())

    def _statement(self, name: str) -> PreparedStatement:
        statement = self.statements.get(name)
        if statement is None:
            what = f'prepared statement "{name}"' if name else "unnamed prepared statement"
            raise SQLError("26000", f"{what} does not exist")
        return statement

    def _portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise SQLError("34000", f'portal "{name}" does not exist')
        return portal

    def _bind(self, message: Bind) -> None:
        statement = self._statement(message.statement)
        if message.portal and message.portal in self.portals:
            raise SQLError("42P03", f'cursor "{message.portal}" already exists')
        formats = message.parameter_formats
        values = message.parameters
        if len(formats) not in (0, 1, len(values)):
            raise SQLError("08P01", f"bind message has {len(formats)} parameter formats but "
                           f"{len(values)} parameters")
        expected = len(statement.parameter_types)
        if len(values) != expected:
            raise SQLError("08P01", f"bind message supplies {len(values)} parameters, but "
                           f'prepared statement "{message.statement}" requires {expected}')
        self._check_not_aborted(statement.plan)
        parameters: list[Value] = []
        for number, (data, value_type) in enumerate(zip(values, statement.parameter_types,
                                                        strict=True), start=1):
            format_code = formats[0] if len(formats) == 1 else (formats[number - 1]
                                                                if formats else 0)
            if format_code not in (0, 1):
                raise SQLError("22023", f"unsupported format code: {format_code}")
            parameters.append(None if data is None else parameter_input(
                data, format_code, value_type, self.text_encoding, number))
        columns = statement.plan.columns if statement.plan else ()
        result_formats = message.result_formats
        if len(result_formats) not in (0, 1, len(columns)):
            raise SQLError("08P01", f"bind message has {len(result_formats)} result formats but "
                           f"query has {len(columns)} columns")
        for format_code in result_formats:
            if format_code not in (0, 1):
                raise SQLError("22023", f"unsupported format code: {format_code}")
        self.portals[message.portal] = Portal(statement, tuple(parameters), result_formats)
        self._send(BindComplete())

    def _describe(self, message: Describe) -> None:
        formats: tuple[int, ...] = ()
        if message.kind == "S":
            statement = self._statement(message.name)
            self._send(ParameterDescription(
                parameter_types=tuple(t.oid for t in statement.parameter_types)))
            plan = statement.plan
        else:
            portal = self._portal(message.name)
            plan, formats = portal.statement.plan, portal.result_formats
        if plan is not None and plan.returns_rows:
            self._send(self._row_description(plan.columns, formats))
        else:
            self._send(NoData())

    def _execute(self, message: Execute) -> None:
        portal = self._portal(message.portal)
        plan = portal.statement.plan
        if plan is None:
            self._send(EmptyQueryResponse())
            return
        if portal.rows is None:
            self._check_not_aborted(plan)
            result = self._run(plan, portal.parameters)
            portal.rows, portal.tag = result.rows, result.tag
        start = portal.sent
        stop = len(portal.rows)
        if message.max_rows > 0:
            stop = min(stop, start + message.max_rows)
        for row in portal.rows[start:stop]:
            self._send(self._data_row(plan.columns, row, portal.result_formats))
        portal.sent = stop
        if stop < len(portal.rows):
            self._send(PortalSuspended())
        elif plan.kind == "select":
            self._send(CommandComplete(tag=f"SELECT {stop - start}"))
        else:
            self._send(CommandComplete(tag=portal.tag))

    def _sync(self) -> None:
        self._skip_to_sync = False
        if self.status is TransactionStatus.IDLE:
            # The implicit transaction ends at Sync, and with it every portal.
            self.portals.clear()
        self._send(ReadyForQuery(status=self.status))

    # -- running plans ------------------------------------------------------------

    def _run(self, plan: Plan, parameters: Sequence[Value]) -> _Result:
        if plan.kind == "select":
            return self._select(plan, parameters)
        if plan.kind == "show":
            return self._show(plan)
        if plan.kind == "set":
            return self._set(plan)
        if plan.kind == "deallocate":
            return self._deallocate(plan)
        return self._transaction(plan)

    def _deallocate(self, plan: Plan) -> _Result:
        if plan.setting == "all":
            unnamed = self.statements.get("")
            self.statements.clear()
            if unnamed is not None:
                self.statements[""] = unnamed
        elif self.statements.pop(plan.setting, None) is None:
            raise SQLError("26000", f'prepared statement "{plan.setting}" does not exist')
        return _Result([], plan.tag)

    def _select(self, plan: Plan, parameters: Sequence[Value]) -> _Result:
        rows: list[tuple[Value, ...]] = []
        source = USERS if plan.from_users else ((),)
        for source_row in source:
            context = EvalContext(self.user, self.database, parameters, source_row)
            if plan.where is not None:
                index, evaluate = plan.where
                if source_row[index] is None or source_row[index] != evaluate(context):
                    continue
            rows.append(tuple(column.evaluate(context) for column in plan.columns))
        return _Result(rows, f"SELECT {len(rows)}")

    def _show(self, plan: Plan) -> _Result:
        if plan.setting == "all":
            return _Result([(name, value) for name, value in sorted(self.settings.items())],
                           "SHOW")
        value = self.settings.get(plan.setting)
        if value is None:
            raise SQLError("42704", f'unrecognized configuration parameter "{plan.setting}"')
        return _Result([(value,)], "SHOW")

    def _set(self, plan: Plan) -> _Result:
        if plan.setting == "all":  # RESET ALL
            for name, (default, _, settable) in _SETTINGS.items():
                if settable:
                    self._change_setting(name, default)
        elif plan.value is None:
            default = _SETTINGS[plan.setting][0] if plan.setting in _SETTINGS else ""
            self._change_setting(plan.setting, default)
        else:
            self._change_setting(plan.setting, plan.value)
        return _Result([], plan.tag)

    def _change_setting(self, name: str, value: str) -> None:
        changed = self.settings.get(name) != value
        self.settings[name] = value
        if changed and name in _SETTINGS and _SETTINGS[name][1]:
            self._send(ParameterStatus(name=name, value=value))

    def _transaction(self, plan: Plan) -> _Result:
        status = self.status
        tag = plan.tag
        if plan.kind == "begin":
            if status is not TransactionStatus.IDLE:
                self._warning("25001", "there is already a transaction in progress")
            self.status = TransactionStatus.IN_TRANSACTION
            return _Result([], tag)
        if status is TransactionStatus.IDLE:
            self._warning("25P01", "there is no transaction in progress")
        elif status is TransactionStatus.FAILED:
            tag = "ROLLBACK"  # COMMIT of a failed transaction rolls it back
        self.status = TransactionStatus.IDLE
        return _Result([], tag)

    def _warning(self, code: str, message: str) -> None:
        self._send(NoticeResponse(severity="WARNING", severity_nonlocalized="WARNING",
                                  code=code, message=message))

    # -- rows -------------------------------------------------------------------

    @staticmethod
    def _format(formats: Sequence[int], index: int) -> int:
        if not formats:
            return 0
        return formats[0] if len(formats) == 1 else formats[index]

    def _row_description(self, columns: Sequence[Column],
                         formats: Sequence[int]) -> RowDescription:
        return RowDescription(fields=tuple(
            FieldDescription(
                name=column.name,
                table_oid=USERS_TABLE_OID if column.table_column else 0,
                column_attribute_number=column.table_column,
                data_type_oid=(TEXT if column.type == UNKNOWN else column.type).oid,
                data_type_size=(TEXT if column.type == UNKNOWN else column.type).size,
                format=self._format(formats, index),
            )
            for index, column in enumerate(columns)
        ))

    def _data_row(self, columns: Sequence[Column], row: Sequence[Value],
                  formats: Sequence[int]) -> DataRow:
        encoding = self.text_encoding
        values: list[bytes | None] = []
        for index, (column, value) in enumerate(zip(columns, row, strict=True)):
            try:
                if value is None:
                    values.append(None)
                elif self._format(formats, index) == 1:
                    values.append(binary_output(value, column.type, encoding))
                else:
                    values.append(text_output(value).encode(encoding))
            except UnicodeEncodeError as exc:
                # As PostgreSQL words it, and in ASCII: the character cannot be sent.
                sequence = " ".join(f"0x{byte:02x}" for byte in
                                    exc.object[exc.start].encode("utf-8"))
                raise SQLError("22P05", f'character with byte sequence {sequence} in encoding '
                               f'"UTF8" has no equivalent in encoding '
                               f'"{self.settings["client_encoding"]}"') from None
        return DataRow(values=tuple(values))


# ---------------------------------------------------------------------------
# Sockets and threads
# ---------------------------------------------------------------------------


class DemoServer:
    """A listening socket that serves :class:`DemoSession` s, one thread per client.

    ``port=0`` picks a free port; read it from :attr:`port` after :meth:`start`
    (background thread) or :meth:`bind` (then :meth:`serve` in your own thread).
    :meth:`stop` closes the listener and every client connection. Exceptions
    that escape a session (bugs) are kept in :attr:`errors`; CancelRequests in
    :attr:`cancel_requests`. Usable as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 password: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.password = password
        self.log = log
        self.errors: list[BaseException] = []
        self.cancel_requests: list[CancelRequest] = []
        self._listener: socket.socket | None = None
        self._wakeup_receive, self._wakeup_send = socket.socketpair()
        self._stopping = threading.Event()
        self._serve_thread: threading.Thread | None = None
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._process_ids = itertools.count(4242)

    @property
    def port(self) -> int:
        """The port the server listens on (after :meth:`bind` or :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("the server is not bound yet: call bind() or start() first")
        port: int = self._listener.getsockname()[1]
        return port

    def bind(self) -> None:
        """Open the listening socket (once)."""
        if self._listener is None:
            self._listener = socket.create_server((self.host, self.requested_port))

    def start(self) -> DemoServer:
        """Bind, then serve in a background thread; return ``self``."""
        self.bind()
        self._serve_thread = threading.Thread(target=self.serve, name="pgwire-demo-server",
                                              daemon=True)
        self._serve_thread.start()
        return self

    def serve(self) -> None:
        """Accept clients until :meth:`stop` is called (blocks)."""
        self.bind()
        listener = self._listener
        assert listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wakeup_receive, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wakeup_receive:
                        return
                    try:
                        connection, _ = listener.accept()
                    except OSError:
                        continue
                    self._start_client(connection)

    def _start_client(self, connection: socket.socket) -> None:
        thread = threading.Thread(target=self._serve_client, args=(connection,),
                                  name="pgwire-demo-client", daemon=True)
        with self._lock:
            if self._stopping.is_set():
                connection.close()
                return
            self._clients[connection] = thread
        thread.start()

    def _serve_client(self, connection: socket.socket) -> None:
        session = DemoSession(process_id=next(self._process_ids), password=self.password,
                              log=self.log, on_cancel=self.cancel_requests.append)
        try:
            with connection:
                while not session.closed:
                    data = connection.recv(65536)
                    reply = session.receive_data(data)
                    if reply:
                        connection.sendall(reply)
                    if not data:
                        break
        except OSError:
            pass  # the client vanished, or stop() shut the socket down
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            with self._lock:
                self._clients.pop(connection, None)

    def stop(self) -> None:
        """Stop accepting, close every client connection, wait for the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wakeup_send.send(b"\0")
        if self._serve_thread is not None:
            self._serve_thread.join()
        with self._lock:
            clients = list(self._clients.items())
        for connection, _ in clients:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join()
        if self._listener is not None:
            self._listener.close()
        self._wakeup_receive.close()
        self._wakeup_send.close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
