"""The pool's own middleware: what a pooled session must watch on the wire.

It is the innermost link of every pooled session's chain (next to the
server) and does three things:

- reads every Query and Parse for session state (``_pool_state``) and applies
  the pool's policy in transaction mode: pin the client to its connection,
  refuse the statement (0A000), or let it run and reset it when the
  connection goes back; in session mode it only records what the reset at
  the end must undo;
- in transaction mode, renames protocol-level named prepared statements to
  names of the pool's own (``pgwire_``, the session's number and a counter:
  each Parse of the client makes a statement of its own, planned in its own
  context, as on a direct connection) and prepares them again, unseen, on a
  connection that lacks them when the client binds or describes them; a
  statement the client closes, or every statement of a client that leaves,
  is deallocated from each connection before another client gets it;
- keeps the client's unnamed statement its own: a Bind of the unnamed
  statement on a connection where this client did not parse it is
  re-prepared from the client's last unnamed Parse, never run from what
  another client left there.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import TYPE_CHECKING, Final

from ..middleware.base import (
    Context,
    Middleware,
    Reject,
    Replace,
    Respond,
    SessionInfo,
    Verdict,
)
from ..protocol import (
    Bind,
    Close,
    CommandComplete,
    Describe,
    ErrorResponse,
    Message,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    TransactionStatus,
)
from ..roles._sql import _parser
from ._pool_state import analyze_session_state

if TYPE_CHECKING:
    from ._pool_config import PoolConfig

__all__ = ["PoolMiddleware", "server_statement_name"]

_PREFIX: Final = "pgwire_"
#: A statement name no client or pool ever prepares: closing it answers
#: CloseComplete and touches nothing.
_NEVER: Final = "pgwire_never_prepared"
_FORWARD: Final = 0
#: EXECUTE or DEALLOCATE of a statement name of the pool's, in libpg_query's JSON
#: (which spells the name out, so no quoting of the SQL can hide it).
_FOREIGN_USE: Final = re.compile(
    r'"(?:ExecuteStmt|DeallocateStmt)":\{"name":"(pgwire_(?:[0-9a-f]+_[0-9]+|never_prepared))"')
_EAT: Final = 1           # a ParseComplete the pool caused: the client must not see it
_DESCRIBE: Final = {"settings": "session-level SET", "role": "SET ROLE / SESSION AUTHORIZATION",
                    "prepare": "PREPARE", "listen": "LISTEN", "temp": "a temporary object",
                    "cursor": "a cursor WITH HOLD", "advisory": "a session-level advisory lock",
                    "sequence": "nextval/setval", "unknown": "a statement whose effects the "
                    "pool cannot see (DO, CALL, LOAD, unparseable text)"}


def server_statement_name(session_id: int, number: int) -> str:
    """The pool's name for the ``number``-th statement session ``session_id`` parsed."""
    return f"{_PREFIX}{session_id:x}_{number}"


class _State:
    __slots__ = ("expect", "names", "parsed", "parses", "unnamed", "unnamed_on")

    def __init__(self) -> None:
        #: Named statements parsed so far (numbers the pool's names).
        self.parsed = 0
        #: Client statement name -> the pool's name for it.
        self.names: dict[str, str] = {}
        #: The pool's name -> the Parse that makes it (for re-preparing).
        self.parses: dict[str, Parse] = {}
        #: The client's last unnamed Parse, and the attachment it ran on.
        self.unnamed: Parse | None = None
        self.unnamed_on = -1
        #: One entry per Parse or Close sent: (batch, what to do with its
        #: answer, pool name it prepared or "", client name it created or "").
        self.expect: deque[tuple[int, int, str, str]] = deque()


class PoolMiddleware(Middleware[_State]):
    """Session-state policy and statement renaming for pooled sessions."""

    client_messages = frozenset({b"Q", b"P", b"B", b"D", b"C"})
    server_messages = frozenset({b"1", b"3", b"C", b"E", b"S"})

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.transaction_mode = config.mode == "transaction"

    def __repr__(self) -> str:
        return "PoolMiddleware()"

    def create_state(self, info: SessionInfo) -> _State:
        return _State()

    # -- client messages ---------------------------------------------------------------

    def on_client_message(self, ctx: Context[_State], message: Message) -> Verdict:
        if isinstance(message, Query):
            lowered = message.query.lower() if self.transaction_mode else ""
            if "deallocate" in lowered or "execute" in lowered:
                answer = self._deallocate(ctx, message.query)
                if answer is not None:
                    return answer
            return self._state_policy(ctx, message.query)
        if isinstance(message, Parse):
            verdict = self._state_policy(ctx, message.query)
            if verdict is not None:
                return verdict
            if not self.transaction_mode:
                if message.statement:
                    ctx._session._pool_dirty.add("prepare")
                return None
            return self._parse(ctx, message)
        if not self.transaction_mode:
            return None
        if isinstance(message, Bind):
            return self._use(ctx, message, message.statement)
        if isinstance(message, Describe):
            return self._use(ctx, message, message.name) if message.kind == "S" else None
        if isinstance(message, Close):
            return self._close(ctx, message)
        return None

    def _state_policy(self, ctx: Context[_State], sql: str) -> Reject | None:
        return self._apply(ctx, analyze_session_state(sql).adds)

    def _apply(self, ctx: Context[_State], adds: frozenset[str]) -> Reject | None:
        """The policy for the session state kinds a statement creates (when it is
        parsed, and again each time a statement parsed earlier runs)."""
        if not adds:
            return None
        session = ctx._session
        if not self.transaction_mode:
            session._pool_dirty |= adds
            return None
        policy = self.config.policy
        for kind in sorted(adds):
            if policy(kind) == "refuse":
                session._pool_note("refused_statements")
                return Reject("0A000", f"{_DESCRIBE[kind]} is not allowed through this "
                              "transaction-mode pool",
                              hint="Session state would outlive the transaction's server "
                              "connection; use SET LOCAL or a session-mode pool.")
        for kind in adds:
            if policy(kind) == "pin":
                session._pool_pins.add(kind)
            else:
                session._pool_dirty.add(kind)
        return None

    def _deallocate(self, ctx: Context[_State], sql: str) -> Respond | Reject | None:
        """``DEALLOCATE name`` of a protocol-level statement (psycopg sends it
        when its statement cache is full): the server knows the statement
        by the pool's name only, so the pool answers for it, as the server
        would. ``EXECUTE`` or ``DEALLOCATE`` of a name of the pool's (another
        client's statement, its name read from pg_prepared_statements) is
        refused as the server refuses a name this client never prepared."""
        parser = _parser()
        try:
            text = parser.parse_sql_json(sql)
            tree = json.loads(text)
        except (parser.ParseError, UnicodeError, RecursionError, ValueError):
            return None
        # EXECUTE (alone, under EXPLAIN or CREATE TABLE AS) or DEALLOCATE of a
        # name of the pool's: another client's statement.
        foreign = _FOREIGN_USE.search(text)
        if foreign is not None:
            return Reject("26000", f'prepared statement "{foreign.group(1)}" does not exist')
        statements = tree.get("stmts", ())
        bodies = [raw.get("stmt", {}).get("DeallocateStmt") for raw in statements]
        if len(statements) != 1:
            return None
        body = bodies[0]
        name = body.get("name") if isinstance(body, dict) else None
        status = ctx.transaction_status
        if not isinstance(name, str) or name not in ctx.state.names or status == "E":
            return None
        pool_name = ctx.state.names.pop(name)
        ctx.state.parses.pop(pool_name, None)
        pool = ctx._session._pool
        assert pool is not None
        pool.orphan((pool_name,))
        return Respond(CommandComplete(tag="DEALLOCATE"),
                       ReadyForQuery(status=TransactionStatus(status)))

    def _batch(self, ctx: Context[_State]) -> int:
        session = ctx._session
        return session._z_seen + session._pending_syncs()

    def _parse(self, ctx: Context[_State], message: Parse) -> Verdict:
        state = ctx.state
        session = ctx._session
        batch = self._batch(ctx)
        name = message.statement
        if not name:
            state.unnamed = message
            state.unnamed_on = session._attachments
            state.expect.append((batch, _FORWARD, "", ""))
            return None
        if name in state.names:
            return Reject("42P05", f'prepared statement "{name}" already exists')
        state.parsed += 1
        pool_name = server_statement_name(session.session_id, state.parsed)
        state.names[name] = pool_name
        server = session._server
        assert server is not None
        renamed = Parse(statement=pool_name, query=message.query,
                        parameter_types=message.parameter_types)
        state.parses[pool_name] = renamed
        server.prepared.add(pool_name)
        state.expect.append((batch, _FORWARD, pool_name, name))
        return Replace(renamed)

    def _use(self, ctx: Context[_State], message: Bind | Describe, name: str) -> Verdict:
        state = ctx.state
        session = ctx._session
        server = session._server
        assert server is not None
        if isinstance(message, Bind):
            # The statement runs again: so does what it does to the session.
            source = state.unnamed if not name else state.parses.get(
                state.names.get(name, ""))
            if source is not None:
                self._apply(ctx, analyze_session_state(source.query).adds)
        if not name:
            if state.unnamed_on == session._attachments:
                return None
            if state.unnamed is None:
                return Reject("26000", "unnamed prepared statement does not exist")
            state.unnamed_on = session._attachments
            state.expect.append((self._batch(ctx), _EAT, "", ""))
            session._pool_note("reprepared")
            return Replace(state.unnamed, message)
        pool_name = state.names.get(name)
        if pool_name is None:
            return None  # the server answers "does not exist", as for a direct client
        renamed: Message = (Bind(portal=message.portal, statement=pool_name,
                                 parameter_formats=message.parameter_formats,
                                 parameters=message.parameters,
                                 result_formats=message.result_formats)
                            if isinstance(message, Bind) else Describe(kind="S", name=pool_name))
        if pool_name in server.prepared:
            return Replace(renamed)
        parse = state.parses.get(pool_name)
        if parse is None:
            return Reject("26000", f'prepared statement "{name}" does not exist')
        server.prepared.add(pool_name)
        state.expect.append((self._batch(ctx), _EAT, pool_name, ""))
        session._pool_note("reprepared")
        return Replace(parse, renamed)

    def _close(self, ctx: Context[_State], message: Close) -> Verdict:
        state = ctx.state
        batch = self._batch(ctx)
        state.expect.append((batch, _FORWARD, "", ""))
        if message.kind == "S":
            if not message.name:
                state.unnamed = None
                state.unnamed_on = -1
                return None
            pool_name = state.names.pop(message.name, None)
            if pool_name is not None:
                state.parses.pop(pool_name, None)
                session = ctx._session
                server = session._server
                assert server is not None and session._pool is not None
                # Gone from every other connection before anyone else uses it.
                session._pool.orphan((pool_name,))
                if pool_name in server.prepared:
                    server.prepared.discard(pool_name)
                    return Replace(Close(kind="S", name=pool_name))
                return Replace(Close(kind="S", name=_NEVER))
        return None

    # -- server messages ---------------------------------------------------------------

    def on_server_message(self, ctx: Context[_State], message: Message) -> Verdict:
        code = message.type_code
        state = ctx.state
        if code == b"S":
            # What the client was told: a connection it lands on later reports
            # the difference (see Session._attach).
            assert isinstance(message, ParameterStatus)
            ctx._session._params_view[message.name] = message.value
            return None
        if code == b"C":
            assert isinstance(message, CommandComplete)
            tag = message.tag
            if tag in ("DISCARD ALL", "DEALLOCATE ALL"):
                self._statements_gone(ctx, everything=tag == "DISCARD ALL")
            return None
        if code == b"E":
            assert isinstance(message, ErrorResponse)
            self._skipped(ctx)
            return None
        if not self.transaction_mode or not state.expect:
            return None
        _, action, _, _ = state.expect.popleft()
        if action == _EAT:
            return Replace()
        return None

    def _skipped(self, ctx: Context[_State]) -> None:
        """An error: the rest of its batch is skipped, so are our entries."""
        state = ctx.state
        session = ctx._session
        batch = session._z_seen
        server = session._server
        kept: deque[tuple[int, int, str, str]] = deque()
        for entry in state.expect:
            if entry[0] != batch:
                kept.append(entry)
                continue
            _, _, pool_name, client_name = entry
            if pool_name and server is not None:
                server.prepared.discard(pool_name)
            if client_name:
                state.names.pop(client_name, None)
        state.expect = kept

    def _statements_gone(self, ctx: Context[_State], *, everything: bool) -> None:
        session = ctx._session
        state = ctx.state
        server = session._server
        if server is not None:
            server.prepared.clear()
        if session._pool is not None:
            session._pool.orphan(tuple(state.parses))  # still on other connections
        state.names.clear()
        state.parses.clear()
        state.unnamed = None
        state.unnamed_on = -1
        if everything:
            session._pool_pins.clear()
            session._pool_dirty.clear()
            if server is not None:
                server.dirty.clear()
        else:
            session._pool_pins.discard("prepare")
            session._pool_dirty.discard("prepare")
