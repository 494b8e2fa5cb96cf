"""A proxy that masks result columns by name for every user outside an exempt set.

    python examples/column_masking.py --listen 127.0.0.1:6432 --upstream 127.0.0.1:5432 \\
        --exempt postgres

With the default rules a column named ``email`` (or ``*_email``) reaches the
client as ``j***@example.com``, ``ssn`` as ``***-**-1234`` and ``password*``
as NULL. :class:`ColumnMasking` takes its own rules: column-name patterns
(``fnmatch``, case-insensitive) mapped to a function of the text value, or to
``None`` for NULL.

How it follows the protocol
---------------------------

- Column names and formats come from RowDescription. In a simple Query each
  result set has its own RowDescription, so several result sets in one Query
  are masked each by its own columns.
- In the extended protocol the rows of an Execute come with no description.
  The middleware keeps, per prepared statement and per portal, the
  RowDescription that answered the client's Describe (of the statement, or of
  the portal), and which statement each portal was bound to. Portals
  described in an earlier batch, and named portals run with a row limit
  (PortalSuspended, then Execute again), are masked with what was recorded
  for them.
- An Execute whose portal was never described (neither it nor its
  statement) would bring rows the proxy cannot name: it is refused with
  42501 before it reaches the server. Drivers describe (libpq and psycopg
  the portal, asyncpg the statement; pg8000 works too), so only hand-made
  clients meet this; it is what keeps "skip the Describe" from being a way
  around the mask.
- Binary format: masks work on text, and the binary form of text types
  (text, varchar, char, name) is their text, so those are masked alike in
  either format. A matching column of any other type (an ``ssn`` stored as
  bigint, an ``email`` jsonb or array) becomes NULL, which every type allows
  in both formats; a string mask would be garbage to the client's decoder.
  So masking never depends on a column's format, which is as well: a
  statement's Describe reports every column as text, and the real formats
  come with each Bind.
- COPY ... TO STDOUT sends rows with no column names, so it cannot be masked:
  for users who are not exempt, a statement that mentions ``COPY`` is refused
  (42501) before it runs, and if a COPY out starts anyway (inside a function,
  say) the session ends (FATAL 42501) before any row leaves the proxy.

What masking at a proxy cannot stop
-----------------------------------

The rules match the name the *result* gives a column, so anything that
renames or transforms it escapes: ``SELECT email AS x``, ``lower(email)``,
``email || ''``, ``row_to_json(t)``, ``array_agg(email)``. Values also leak
through questions rather than answers: ``WHERE email LIKE 'a%'`` or
``ORDER BY ssn`` reveal them a bit at a time, and writes (``INSERT ... SELECT
email``, ``COPY`` into a table) copy them somewhere unmasked. RowDescription
also carries the column's table OID and attribute number, which survive an
alias (not an expression); a stricter variant could resolve its rules to
those with one catalog query after login.

Masking at a proxy is a convenience for well-behaved clients. To keep data
from a role, do it in the server: column privileges (``GRANT SELECT (id,
name) ON users TO app``), a view that exposes the masked form, row-level
security, or a separate role for the people who may see the real values.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import re
import signal
import sys
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from pgwire.adapters import parse_address
from pgwire.adapters.asyncio import run, start_proxy
from pgwire.middleware import AuthResult, Context, Middleware, Reject, Replace, SessionInfo, Verdict
from pgwire.protocol import (
    Bind,
    CommandComplete,
    CopyBothResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    Execute,
    FieldDescription,
    Message,
    NoData,
    Parse,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    python_encoding,
)
from pgwire.proxy import ProxyConfig, format_address

__all__ = ["DEFAULT_RULES", "ColumnMasking", "mask_email", "mask_ssn"]

#: A mask: the column's text value in, the text the client gets out.
Mask = Callable[[str], str]

#: text, varchar, bpchar (char(n)), name: types whose binary form is their text.
TEXT_TYPES: Final = frozenset({25, 1043, 1042, 19})
REFUSED: Final = "42501"


def mask_email(value: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``."""
    local, at, domain = value.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"


def mask_ssn(value: str) -> str:
    """``123-45-6789`` -> ``***-**-6789``: only the last four digits stay."""
    digits = re.sub(r"\D", "", value)
    return f"***-**-{digits[-4:]}" if len(digits) >= 4 else "***"


DEFAULT_RULES: Final[Mapping[str, Mask | None]] = {
    "email": mask_email, "*_email": mask_email, "ssn": mask_ssn, "password*": None,
}

# -- what one session knows about its statements and portals ----------------------------


@dataclass(eq=False)
class Statement:
    """A prepared statement: its RowDescription once a Describe of it came back."""

    fields: tuple[FieldDescription, ...] | None = None
    describing: bool = False   # a Describe was sent: its answer comes before any rows


@dataclass(eq=False)
class Portal:
    """A portal: the statement it was bound to, and its own description."""

    statement: Statement
    fields: tuple[FieldDescription, ...] | None = None
    describing: bool = False

    def row_fields(self) -> tuple[FieldDescription, ...]:
        """The columns its rows have: its own Describe's, else its statement's."""
        return self.fields if self.fields is not None else self.statement.fields or ()


# What the server's next answers belong to, in the order the requests were sent.
@dataclass(frozen=True)
class Pending:
    kind: str                       # "query", "describe", "execute" or "sync"
    target: Statement | Portal | None = None


@dataclass
class MaskState:
    """One session's knowledge: who it is, its statements, portals and answers due."""

    exempt: bool = False
    statements: dict[str, Statement] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    pending: deque[Pending] = field(default_factory=deque)
    columns: tuple[FieldDescription, ...] = ()    # the current simple-query result set


class ColumnMasking(Middleware[MaskState]):
    """Mask result columns whose names match ``rules``, unless the user is in ``exempt``."""

    client_messages = frozenset({b"Q", b"P", b"B", b"D", b"E", b"S"})
    server_messages = frozenset({b"T", b"n", b"D", b"C", b"s", b"I", b"Z", b"H", b"W"})

    def __init__(self, rules: Mapping[str, Mask | None] = DEFAULT_RULES,
                 exempt: Collection[str] = ()) -> None:
        self.rules = {pattern.lower(): mask for pattern, mask in rules.items()}
        self.exempt = frozenset(exempt)

    def create_state(self, info: SessionInfo) -> MaskState:
        return MaskState()

    def on_authenticated(self, ctx: Context[MaskState], result: AuthResult) -> Reject | None:
        ctx.state.exempt = result.user in self.exempt
        return None

    def rule(self, column: str) -> tuple[bool, Mask | None]:
        """Whether ``column`` is masked, and with what (None: NULL)."""
        for pattern, mask in self.rules.items():
            if fnmatch.fnmatchcase(column.lower(), pattern):
                return True, mask
        return False, None

    # -- the client's requests: remember what the answers will belong to --------------

    def on_client_message(self, ctx: Context[MaskState], message: Message) -> Verdict:
        state = ctx.state
        if state.exempt:
            return None
        if isinstance(message, Query):
            # Even when refused below: the server then answers the proxy's stand-in
            # Query, with an error and ReadyForQuery, in this Query's place.
            state.pending.append(Pending("query"))
            state.statements.pop("", None)    # a Query destroys the unnamed statement
            state.portals.pop("", None)       # ... and portal
        if isinstance(message, Query | Parse) and re.search(r"\bcopy\b", message.query, re.I):
            return Reject(REFUSED, "COPY is not allowed through the masking proxy",
                          hint="COPY output has no column names, so it cannot be masked.")
        if isinstance(message, Parse):
            state.statements[message.statement] = Statement()
        elif isinstance(message, Bind):
            # A statement made with SQL PREPARE was never Parsed here: unknown so far.
            statement = state.statements.setdefault(message.statement, Statement())
            state.portals[message.portal] = Portal(statement)
        elif isinstance(message, Describe):
            target: Statement | Portal
            if message.kind == "S":
                target = state.statements.setdefault(message.name, Statement())
            else:
                target = state.portals.setdefault(message.name, Portal(Statement()))
            target.describing = True
            state.pending.append(Pending("describe", target))
        elif isinstance(message, Execute):
            portal = state.portals.get(message.portal)
            if portal is None or not (portal.describing or portal.statement.describing):
                return Reject(REFUSED, "the masking proxy needs a Describe of the portal "
                              "or its statement before Execute")
            state.pending.append(Pending("execute", portal))
        elif isinstance(message, Sync):
            state.pending.append(Pending("sync"))
        return None

    # -- the server's answers ----------------------------------------------------------

    def on_server_message(self, ctx: Context[MaskState], message: Message) -> Verdict:
        state = ctx.state
        if state.exempt:
            return None
        pending = state.pending
        current = pending[0] if pending else Pending("none")
        if isinstance(message, RowDescription | NoData):
            fields = message.fields if isinstance(message, RowDescription) else ()
            if current.kind == "query":
                state.columns = fields
            elif current.kind == "describe":
                assert current.target is not None
                current.target.fields = fields
                pending.popleft()
        elif isinstance(message, DataRow):
            if current.kind == "query":
                return self.mask(ctx, state.columns, message)
            if current.kind == "execute":
                assert isinstance(current.target, Portal)
                return self.mask(ctx, current.target.row_fields(), message)
            return Reject(REFUSED, "rows the masking proxy cannot attribute to a request")
        elif isinstance(message, CommandComplete | PortalSuspended | EmptyQueryResponse):
            if current.kind == "execute":
                pending.popleft()
        elif isinstance(message, ReadyForQuery):
            # The end of a Query, or of a batch at its Sync: after an error the
            # server skipped the rest of the batch, and those answers never come.
            while pending:
                if pending.popleft().kind in ("sync", "query"):
                    break
        elif isinstance(message, CopyOutResponse | CopyBothResponse):
            return Reject(REFUSED, "COPY output cannot be masked; the session ends")
        return None

    def mask(self, ctx: Context[MaskState], fields: tuple[FieldDescription, ...],
             row: DataRow) -> Verdict:
        values = list(row.values)
        if len(values) != len(fields):
            return Reject(REFUSED, "a row that does not match its description")
        encoding = python_encoding(ctx.parameters.get("client_encoding", "UTF8"))
        changed = False
        for index, column in enumerate(fields):
            masked, mask = self.rule(column.name)
            value = values[index]
            if not masked or value is None:
                continue
            if mask is None or column.data_type_oid not in TEXT_TYPES:
                values[index] = None
            else:
                # Text types: the same bytes in text and binary format.
                text = mask(value.decode(encoding, "replace"))
                values[index] = text.encode(encoding, "replace")
            changed = True
        return Replace(DataRow(values=tuple(values))) if changed else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:6432", help="host:port to accept on")
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL's host:port")
    parser.add_argument("--exempt", action="append", default=[], metavar="USER",
                        help="a user who sees the real values (repeatable)")
    args = parser.parse_args(argv)
    masking = ColumnMasking(exempt=args.exempt)
    config = ProxyConfig(upstream=parse_address(args.upstream), middleware=[masking])

    async def proxy_main() -> None:
        proxy = await start_proxy(config, [parse_address(args.listen, 6432)])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(proxy.shutdown()))
        print(f"listening on {format_address(proxy.addresses[0])} (masking "
              f"{', '.join(masking.rules)})", flush=True)
        await proxy.serve_until_shutdown()

    run(proxy_main)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
