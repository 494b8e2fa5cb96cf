"""Keep a session's ``current_user`` and ``session_user`` as the server has them.

PostgreSQL reports no ParameterStatus when ``role`` changes, so the tracker
models it from the statements it is shown and the answers that come back:

- client side: each Query (its analysed statements), Parse/Bind/Execute/Close
  (named statements and portals are remembered until closed), Sync and
  FunctionCall, in the order they go upstream;
- server side: CommandComplete, EmptyQueryResponse, PortalSuspended,
  ErrorResponse and ReadyForQuery, which say which statement finished and
  whether its transaction committed.

A change applies when its statement completes, and follows PostgreSQL's
setting rules: ``SET LOCAL`` lasts to the end of the transaction; a plain SET
inside a transaction survives COMMIT and is undone by ROLLBACK, by a failed
implicit transaction, and by ROLLBACK TO a savepoint set before it.

The model is exact for what the statements show; what it cannot see
(a function that calls set_config, a SECURITY DEFINER body) is caught by
asking the server: :meth:`RoleTracker.ready` returns True when the session is
idle after a change, and the guard then runs ``SELECT current_user,
session_user`` and hands the answer to :meth:`RoleTracker.verified`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..protocol import (
    Bind,
    Close,
    CommandComplete,
    ErrorResponse,
    Execute,
    FunctionCall,
    Message,
    Parse,
    Query,
    ReadyForQuery,
)
from ._sql import Analysis, StatementInfo, analyze_roles
from ._state import RoleChange, SessionRoles

__all__ = ["CLIENT_MESSAGES", "LOGIN_SQL", "SERVER_MESSAGES", "VERIFY_SQL", "RoleTracker"]

#: The message types a tracker must be shown, by direction.
CLIENT_MESSAGES = frozenset({b"Q", b"P", b"B", b"E", b"C", b"S", b"F"})
SERVER_MESSAGES = frozenset({b"C", b"E", b"Z", b"I", b"s", b"G"})
#: Asked right after login: who the session is, and its default role.
LOGIN_SQL = "SELECT current_user, session_user, pg_catalog.current_setting('role')"
#: Asked once the session is idle after a change.
VERIFY_SQL = "SELECT current_user, session_user"

# The two settings the model follows: (role, session_authorization);
# role None means NONE (current_user is the session user).
_Values = tuple[str | None, str | None]


@dataclass(slots=True)
class _QueryEntry:
    statements: tuple[StatementInfo, ...]
    sql: str
    done: int = 0
    failed: bool = False


@dataclass(slots=True)
class _ExecuteEntry:
    statement: StatementInfo | None
    sql: str


@dataclass(slots=True)
class _SyncEntry:
    """A Sync sent upstream: the end of an extended batch."""


#: What a ReadyForQuery ends (a tuple: a union would be built on every call).
_REQUEST_ENDS = (_QueryEntry, _SyncEntry)
#: Statement nodes :meth:`RoleTracker._apply` reads even without actions.
_NODES_READ = frozenset({"PrepareStmt", "DeallocateStmt", "ExecuteStmt",
                         "DeclareCursorStmt", "FetchStmt"})


@dataclass(slots=True)
class _Transaction:
    """Values a COMMIT would keep, and savepoints to roll back to."""

    kept: _Values
    savepoints: list[tuple[str, _Values, _Values]] = field(default_factory=list)


class RoleTracker:
    """The role model of one session (see the module docstring)."""

    __slots__ = ("_base", "_current", "_cursors", "_default_role", "_dirty", "_failed_request",
                 "_pending", "_portals", "_prepared", "_statements", "_transaction",
                 "always_verify", "roles")

    def __init__(self, roles: SessionRoles) -> None:
        self.roles = roles
        login = roles.session_user or roles.login_role
        self._default_role: str | None = None
        self._base: _Values = (None, login)
        self._current: _Values = self._base
        self._transaction: _Transaction | None = None
        self._pending: deque[_QueryEntry | _ExecuteEntry | _SyncEntry] = deque()
        self._statements: dict[str, tuple[StatementInfo | None, str]] = {}
        self._portals: dict[str, tuple[StatementInfo | None, str]] = {}
        self._prepared: dict[str, StatementInfo] = {}
        #: Cursors declared over a query that may change a role.
        self._cursors: set[str] = set()
        self._dirty = False
        #: Ask for a verification after every request, not only after changes
        #: the statements show (a function may change the role unseen).
        self.always_verify = False
        self._failed_request = False
        self._publish(None, verified=False)

    # -- whole messages ------------------------------------------------------------------

    def observe_client(self, message: Message, analysis: Analysis | None = None,
                       *, rejected: bool = False) -> None:
        """A client message of :data:`CLIENT_MESSAGES` on its way upstream.

        For a Query or Parse, ``analysis`` is the text's analysis when the
        caller has it (it is computed here otherwise); ``rejected`` says the
        message was refused, so nothing of it will run.
        """
        if isinstance(message, Query):
            if rejected:
                self.query(None, message.query)
            else:
                self.query(analysis or _analyze(message.query), message.query)
        elif isinstance(message, Parse):
            self.parse(message.statement,
                       None if rejected else analysis or _analyze(message.query),
                       message.query)
        elif isinstance(message, Bind):
            self.bind(message.portal, message.statement)
        elif isinstance(message, Execute):
            self.execute(message.portal)
        elif isinstance(message, Close):
            self.close(message.kind, message.name)
        elif isinstance(message, FunctionCall):
            self.function_call()
        elif message.type_code == b"S":
            self.sync()

    def observe_server(self, message: Message) -> bool:
        """A server message of :data:`SERVER_MESSAGES` on its way to the client.

        True when the session is now idle after a change: the caller should
        run :data:`VERIFY_SQL` and hand the answer to :meth:`verified`.
        """
        code = message.type_code
        if code == b"C":
            assert isinstance(message, CommandComplete)
            self.command_complete(message.tag)
        elif code == b"E":
            if not (isinstance(message, ErrorResponse)
                    and message.ends_session):
                self.error()
        elif code == b"Z":
            assert isinstance(message, ReadyForQuery)
            return self.ready(str(message.status.value))
        elif code == b"I":
            self.empty_query()
        elif code == b"s":
            self.portal_suspended()
        elif code == b"G":
            self.copy_in()
        return False

    # -- facts from the server ---------------------------------------------------------

    def login(self, current_user: str, session_user: str, role_setting: str) -> None:
        """What the server said right after login (:data:`LOGIN_SQL`)."""
        self._default_role = None if role_setting in ("none", "") else current_user
        self.roles.default_role = self._default_role
        self.roles.starting_role_known = True
        self._base = (self._default_role, session_user)
        self._current = self._base
        self._transaction = None
        self._publish(None, verified=True)

    def verified(self, current_user: str, session_user: str) -> None:
        """The server's own answer to ``SELECT current_user, session_user``."""
        roles = self.roles
        if (roles.current_user, roles.session_user) != (current_user, session_user):
            before = (roles.current_user, roles.session_user)
            roles.current_user, roles.session_user = current_user, session_user
            roles.publish(RoleChange(before_current=before[0], after_current=current_user,
                                     before_session=before[1], after_session=session_user,
                                     statement=None, verified=True))
        role = None if current_user == session_user else current_user
        self._current = (role, session_user)
        if self._transaction is None:
            self._base = self._current

    # -- client messages, in the order they go upstream ----------------------------------

    def query(self, analysis: Analysis | None, sql: str = "") -> None:
        """A Query went upstream (``None``: it was replaced by a rejection)."""
        statements = analysis.statements if analysis is not None else ()
        self._pending.append(_QueryEntry(statements, sql))

    def parse(self, name: str, analysis: Analysis | None, sql: str = "") -> None:
        """A Parse went upstream (``None``: it was rejected, so nothing is named)."""
        statement = analysis.statements[0] if (
            analysis is not None and len(analysis.statements) == 1) else None
        if statement is None or not (statement.actions or statement.transaction
                                     or statement.prepared is not None
                                     or statement.node == "DeallocateStmt"):
            # Nothing a role model needs: not remembered (a client may name
            # any number of statements; only these few cost memory here).
            self._statements.pop(name, None)
            return
        self._statements[name] = (statement, sql)

    def bind(self, portal: str, statement: str) -> None:
        """A Bind went upstream: the portal runs that statement."""
        self._portals[portal] = self._statements.get(statement, (None, ""))

    def execute(self, portal: str) -> None:
        """An Execute went upstream."""
        statement, sql = self._portals.get(portal, (None, ""))
        self._pending.append(_ExecuteEntry(statement, sql))

    def close(self, kind: str, name: str) -> None:
        """A Close went upstream (``kind`` ``S`` or ``P``)."""
        (self._statements if kind == "S" else self._portals).pop(name, None)

    def sync(self) -> None:
        """A Sync went upstream."""
        self._pending.append(_SyncEntry())

    def function_call(self) -> None:
        """A FunctionCall went upstream (answered by ReadyForQuery, like a Query)."""
        self._pending.append(_QueryEntry((), ""))

    # -- server messages ---------------------------------------------------------------

    def command_complete(self, tag: str) -> None:
        """A statement finished: apply what it does."""
        head = self._pending[0] if self._pending else None
        if isinstance(head, _QueryEntry):
            if head.done < len(head.statements):
                self._apply(head.statements[head.done], tag, head.sql)
            head.done += 1
        elif isinstance(head, _ExecuteEntry):
            self._pending.popleft()
            if head.statement is not None:
                self._apply(head.statement, tag, head.sql)

    def empty_query(self) -> None:
        """EmptyQueryResponse: an Execute of an empty statement ended."""
        if self._pending and isinstance(self._pending[0], _ExecuteEntry):
            self._pending.popleft()

    def portal_suspended(self) -> None:
        """PortalSuspended: the Execute ended with rows left (its effects have run)."""
        head = self._pending[0] if self._pending else None
        if isinstance(head, _ExecuteEntry):
            self._pending.popleft()
            if head.statement is not None:
                self._apply(head.statement, "", head.sql)

    def copy_in(self) -> None:
        """CopyInResponse: the server is in COPY FROM STDIN mode.

        When an Execute started it, the Sync the client sent behind that
        Execute reaches the server during the copy, and PostgreSQL ignores a
        Sync there: its ReadyForQuery comes only for the Sync after CopyDone.
        Forget that Sync, or every later request would end one answer late.
        """
        pending = self._pending
        if len(pending) > 1 and isinstance(pending[0], _ExecuteEntry) and isinstance(
            pending[1], _SyncEntry
        ):
            del pending[1]

    def error(self) -> None:
        """ErrorResponse: the rest of the Query, or of the batch, does not run."""
        self._failed_request = True
        head = self._pending[0] if self._pending else None
        if isinstance(head, _QueryEntry):
            head.failed = True
        while self._pending and isinstance(self._pending[0], _ExecuteEntry):
            self._pending.popleft()

    def ready(self, status: str) -> bool:
        """ReadyForQuery: end of a request. True when a change should be verified now."""
        while self._pending:
            entry = self._pending.popleft()
            if isinstance(entry, _REQUEST_ENDS):
                break
        if status == "I":
            # Portals end with their transaction (an implicit one at Sync).
            self._portals.clear()
            self._cursors.clear()
            if self._failed_request and self._transaction is not None:
                self._rollback()
            elif self._transaction is not None or self._current != self._base:
                self._commit()
            self._transaction = None
            self._base = self._current
        elif status == "T" and self._transaction is None:
            self._transaction = _Transaction(self._current)
        self._failed_request = False
        self._publish(None, verified=False)
        verify = (self._dirty or self.always_verify) and status == "I" and not self._pending
        if verify:
            self._dirty = False
        return verify

    @property
    def busy(self) -> bool:
        """Requests are in flight (their effects are not known yet)."""
        return bool(self._pending)

    # -- the model ---------------------------------------------------------------------

    def _apply(self, statement: StatementInfo, tag: str, sql: str) -> None:
        if not (statement.actions or statement.transaction is not None
                or statement.prepared is not None or statement.node in _NODES_READ):
            # Most statements: nothing below applies.
            self._publish(sql, verified=False)
            return
        transaction = statement.transaction
        if transaction is not None:
            self._transaction_control(transaction, statement.savepoint, tag)
            return
        if statement.prepared is not None:
            if statement.node == "PrepareStmt":
                self._prepared[statement.prepared] = statement
            elif statement.node == "DeallocateStmt":
                self._prepared.pop(statement.prepared, None)
            elif statement.node == "ExecuteStmt":
                prepared = self._prepared.get(statement.prepared)
                if prepared is not None and prepared.actions:
                    self._dirty = True  # what it runs is modelled as unknown: ask
        elif statement.node == "DeallocateStmt":
            self._prepared.clear()
        if statement.node == "DeclareCursorStmt" and statement.actions:
            self._cursors.add(statement.prepared or "")
            self._dirty = True  # WITH HOLD runs it at commit
        elif statement.node == "FetchStmt" and statement.prepared in self._cursors:
            self._dirty = True  # the cursor's query runs as it is fetched
        for action in statement.actions:
            if action.deferred:
                continue
            if action.kind == "discard_all":
                # SET SESSION AUTHORIZATION DEFAULT, then the role's default;
                # DISCARD ALL cannot run in a transaction block, and commits
                # at once even inside an extended batch.
                self._set(1, self.roles.login_role, local=False)
                self._set(0, self._default_role, local=False)
                self._prepared.clear()
                self._cursors.clear()
                self._transaction = None
                self._base = self._current
            elif action.kind == "set_role":
                if action.none:
                    self._set(0, None, local=action.local)
                elif action.reset:
                    self._set(0, self._default_role, local=action.local)
                elif action.target is None:
                    self._dirty = True  # a value only the server knows
                else:
                    self._set(0, action.target, local=action.local)
            elif action.kind == "set_session_authorization":
                # Setting it (even to the same user) sets the role to NONE;
                # resetting it returns the role to its default (PostgreSQL 15).
                if action.reset:
                    self._set(1, self.roles.login_role, local=action.local)
                    self._set(0, self._default_role, local=action.local)
                elif action.target is None:
                    self._dirty = True
                else:
                    self._set(1, action.target, local=action.local)
                    self._set(0, None, local=action.local)
            else:
                self._dirty = True  # CALL, DO, functions: ask the server afterwards
        self._publish(sql, verified=False)

    def _set(self, index: int, value: str | None, *, local: bool) -> None:
        current = list(self._current)
        current[index] = value
        self._current = (current[0], current[1])
        self._dirty = True
        transaction = self._transaction
        if transaction is None:
            # An implicit transaction (one Query or batch): kept unless it fails.
            transaction = self._transaction = _Transaction(self._base)
        if not local:
            kept = list(transaction.kept)
            kept[index] = value
            transaction.kept = (kept[0], kept[1])

    def _transaction_control(self, kind: str, savepoint: str | None, tag: str) -> None:
        if kind == "begin":
            if self._transaction is None:
                self._transaction = _Transaction(self._current)
        elif kind in ("commit", "prepare"):
            if tag.startswith("ROLLBACK"):  # COMMIT of a failed transaction
                self._rollback()
            else:
                self._commit()
        elif kind == "rollback":
            self._rollback()
        elif kind == "savepoint" and savepoint is not None:
            transaction = self._transaction
            if transaction is not None:
                transaction.savepoints.append((savepoint, self._current, transaction.kept))
        elif kind in ("release", "rollback_to") and savepoint is not None:
            transaction = self._transaction
            if transaction is None:
                return
            for index in range(len(transaction.savepoints) - 1, -1, -1):
                name, current, kept = transaction.savepoints[index]
                if name == savepoint:
                    if kind == "release":
                        del transaction.savepoints[index:]
                    else:
                        del transaction.savepoints[index + 1:]
                        if (self._current, transaction.kept) != (current, kept):
                            self._dirty = True
                        self._current, transaction.kept = current, kept
                    break

    def _commit(self) -> None:
        transaction = self._transaction
        if transaction is not None:
            if self._current != transaction.kept:
                self._dirty = True  # SET LOCAL values end here
            self._current = transaction.kept
        self._base = self._current
        self._transaction = None

    def _rollback(self) -> None:
        if self._current != self._base:
            self._dirty = True
        self._current = self._base
        self._transaction = None

    def _publish(self, sql: str | None, *, verified: bool) -> None:
        roles = self.roles
        role, session = self._current
        current = role if role is not None else session
        if (roles.current_user, roles.session_user) == (current, session) and roles.tracked:
            return
        before = (roles.current_user, roles.session_user)
        roles.current_user, roles.session_user = current, session
        was_tracked, roles.tracked = roles.tracked, True
        if was_tracked:
            roles.publish(RoleChange(before_current=before[0], after_current=current,
                                     before_session=before[1], after_session=session,
                                     statement=sql, verified=verified))


def _analyze(sql: str) -> Analysis | None:
    """The analysis, or None (effects unknown) when pglast is not installed
    (text without any role word is not parsed: see :func:`analyze_roles`)."""
    try:
        return analyze_roles(sql)
    except ModuleNotFoundError:
        return None
