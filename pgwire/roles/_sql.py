"""What a SQL string does to roles, read with PostgreSQL's own grammar.

:func:`analyze` parses the text with libpg_query (through pglast: the same
parser PostgreSQL runs, so a string splits into statements, and quotes,
dollar quotes, nested comments and Unicode escapes resolve, exactly as on
the server) and walks every statement's tree for what can change a role:

- ``SET [SESSION|LOCAL] ROLE``, ``RESET ROLE``, ``SET ROLE NONE``, the generic
  ``SET role = ...`` under any spelling (GUC names are case-insensitive);
- ``SET``/``RESET SESSION AUTHORIZATION``;
- ``set_config('role' | 'session_authorization', ...)`` anywhere in any
  expression (a CTE, a view or rule body, COPY (query), EXPLAIN ANALYZE,
  CREATE TABLE AS, PREPARE, a default ...), in positional or named notation;
  a first argument that is not a literal is reported as unknown;
- ``ALTER ROLE/USER/DATABASE ... SET/RESET role`` and ``ALTER SYSTEM``;
- ``DISCARD ALL`` (returns to the default role);
- ``DO`` blocks, ``CALL``, and function or procedure definitions with a
  ``SET role`` clause or a SQL body that changes a role;
- writes to ``pg_settings`` (its update rule calls set_config).

It also reports transaction control (for tracking what a ROLLBACK undoes)
and statements that change how later text is lexed
(``standard_conforming_strings``). Results are cached by text: a repeated
statement costs a dictionary lookup. A text whose statements are all of
kinds that report nothing (the usual SELECT, INSERT, UPDATE...) and that
names neither set_config nor pg_settings costs the parse alone: its JSON tree
is read for the statement kinds, not decoded.

:func:`analyze_roles` is what a role tracker uses: the same, but a text
without any of :data:`ROLE_WORDS` (a lexical test, no parse) gives an empty
:class:`Analysis`, since nothing in it can matter to a role model.

Without pglast (an optional dependency: ``pip install pgwire[sql]``),
:func:`analyze` raises :class:`ModuleNotFoundError` naming the extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from ._state import ROLE_SETTINGS

__all__ = [
    "ROLE_SETTINGS",
    "ROLE_WORDS",
    "Analysis",
    "RoleAction",
    "StatementInfo",
    "analyze",
    "analyze_roles",
    "lexing_hazard",
    "mentions_any",
    "mentions_role_words",
]

#: Settings whose change alters how the server lexes later SQL text.
LEXING_SETTINGS: Final = frozenset({"standard_conforming_strings", "client_encoding"})
_SET_CONFIG_PARAMETERS: Final = ("setting_name", "new_value", "is_local")
#: Statement kinds whose nested VariableSetStmt sets a future default, not the session.
_DEFAULT_SETTERS: Final = ("AlterRoleSetStmt", "AlterDatabaseSetStmt", "AlterSystemStmt")
_FUNCTION_DEFINERS: Final = ("CreateFunctionStmt", "AlterFunctionStmt")
_WRITES: Final = ("UpdateStmt", "InsertStmt", "DeleteStmt", "MergeStmt")
#: Statements whose expressions run as the statement does; set_config anywhere
#: else (a view, rule, default, PREPARE, cursor) runs later, if ever.
_RUNS_NOW: Final = frozenset({
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ExplainStmt",
    "CopyStmt", "CreateTableAsStmt", "CallStmt", "ExecuteStmt", "ReturnStmt",
    "VariableSetStmt",
})
_TRANSACTION_KINDS: Final = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to",
    "TRANS_STMT_PREPARE": "prepare",
    "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}


@dataclass(frozen=True, slots=True)
class RoleAction:
    """One thing a statement does (or may do) to the session's roles.

    ``kind`` is one of:

    - ``set_role`` / ``set_session_authorization``: ``target`` is the role
      asked for; ``None`` with ``reset=True`` for RESET and DEFAULT (back to
      the default role), with ``none=True`` for ``SET ROLE NONE`` (to the
      session user), and with neither when the value is not a literal;
    - ``discard_all``: back to the default role and the login's session user;
    - ``alter_role_default``: ``ALTER ROLE/DATABASE/SYSTEM ... SET/RESET`` of a
      role setting (it changes what future sessions start as);
    - ``dynamic_set_config``: set_config with a setting name that is not a
      literal, so it may be ``role``;
    - ``settings_table``: a write to ``pg_settings``, whose rule calls set_config;
    - ``do_block``, ``call``: code the statement cannot show;
    - ``function_definition``: a function or procedure definition (``detail``
      says whether it carries a role-setting SET clause or a SQL body that
      changes a role, or neither, ``opaque`` for a body in another language).
    """

    kind: str
    target: str | None = None
    reset: bool = False
    local: bool = False
    #: Found inside another construct (``set_config`` in a view body...), so it
    #: runs later or elsewhere rather than in this session now.
    deferred: bool = False
    detail: str = ""
    #: The value is the statement's parameter ``$n`` (known at Bind, not Parse).
    parameter: int | None = None
    #: ``SET ROLE NONE``: the current user becomes the session user (not the
    #: default role, which is where RESET ROLE goes).
    none: bool = False

    @property
    def changes_role_now(self) -> bool:
        """True for a change applied to this session when the statement runs."""
        return self.kind in ("set_role", "set_session_authorization",
                             "discard_all") and not self.deferred


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """One statement of a SQL string: its node type and what it does to roles."""

    node: str
    actions: tuple[RoleAction, ...] = ()
    #: ``begin``, ``commit``, ``rollback``, ``savepoint``, ``release``,
    #: ``rollback_to``, ``prepare`` ... for transaction control, else None.
    transaction: str | None = None
    savepoint: str | None = None
    #: True when it may change standard_conforming_strings or client_encoding.
    changes_lexing: bool = False
    #: The prepared statement a PREPARE, EXECUTE or DEALLOCATE names, or the
    #: cursor a DECLARE, FETCH/MOVE or CLOSE names (None for DEALLOCATE ALL,
    #: CLOSE ALL and every other statement).
    prepared: str | None = None


@dataclass(frozen=True, slots=True)
class Analysis:
    """The statements of one SQL string, or why it could not be parsed."""

    statements: tuple[StatementInfo, ...] = ()
    #: The parser's message when the text is not valid SQL (then no statements).
    error: str | None = None

    @property
    def actions(self) -> Iterator[RoleAction]:
        """Every role action of every statement, in order."""
        for statement in self.statements:
            yield from statement.actions

    @property
    def touches_roles(self) -> bool:
        """True when some statement changes, or may change, a role."""
        return any(statement.actions for statement in self.statements)

    @property
    def changes_lexing(self) -> bool:
        """True when some statement may change how later SQL is lexed."""
        return any(statement.changes_lexing for statement in self.statements)


_EMPTY: Final = Analysis()


#: Texts longer than this are analysed every time, never kept: the cache
#: holds its keys, and 8,192 distinct megabyte-long texts would be 8 GB.
CACHED_TEXT_LIMIT: Final = 16 * 1024


def analyze(sql: str) -> Analysis:
    """Parse ``sql`` and report what each statement does to roles (cached
    for texts up to :data:`CACHED_TEXT_LIMIT` characters)."""
    if not sql:
        return _EMPTY
    if len(sql) > CACHED_TEXT_LIMIT:
        return _analyze_text(sql)
    return _analyze(sql)


@lru_cache(maxsize=8192)
def _analyze(sql: str) -> Analysis:
    return _analyze_text(sql)


#: Words (lower case) one of which every construct a role model reads needs
#: spelled out in the text: what gives a statement role actions (SET/RESET of
#: role or session_authorization under any name, ALTER ... SET/RESET, DISCARD,
#: DO, CALL, FUNCTION/PROCEDURE/ROUTINE definitions, set_config, pg_settings),
#: transaction control (BEGIN, START, COMMIT, END, ROLLBACK, ABORT, SAVEPOINT,
#: RELEASE, PREPARE TRANSACTION) and the prepared statements and cursors a
#: tracker follows (PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH, MOVE, CLOSE).
#: Keywords cannot be quoted or escaped; identifiers (a setting or function
#: name) can be quoted, but only ``U&"..."`` changes their letters, hence
#: ``u&``. "set" is not needed: a SET of another setting has no role action.
ROLE_WORDS: Final = (
    "role", "authorization", "u&", "reset", "set_config", "pg_settings", "discard",
    "do", "call", "function", "procedure", "routine", "begin", "start", "commit", "end",
    "rollback", "abort", "savepoint", "release", "prepare", "execute", "deallocate",
    "declare", "fetch", "move", "close",
)


def mentions_any(sql: str, words: tuple[str, ...]) -> bool:
    """True when the lower-cased ``sql`` contains one of ``words`` (lower case)
    as a substring: inside a longer word, identifier, string or comment too.

    A lexical pre-filter for an analysis that looks for statements and names
    spelled with these words: keywords cannot be quoted or escaped, and an
    identifier's letters change only in a ``U&"..."`` (put ``u&`` in the
    words when identifiers count). It never misses; at worst it sends text
    to the parser for nothing. (A loop of substring tests: several times
    faster than one regular expression of the alternatives.)
    """
    lowered = sql.lower()
    for word in words:  # noqa: SIM110 - a generator in any() is slower
        if word in lowered:
            return True
    return False


def mentions_role_words(sql: str) -> bool:
    """False when ``sql`` contains none of :data:`ROLE_WORDS` in any case, so
    that :func:`analyze` would find no role action, transaction control,
    prepared statement or cursor in it: every statement it reports is just a
    node type (maybe with ``changes_lexing``), or the text does not parse."""
    return mentions_any(sql, ROLE_WORDS)


def analyze_roles(sql: str, *, check_syntax: bool = False) -> Analysis:
    """:func:`analyze` as a role model needs it: the same, except that text
    without any of :data:`ROLE_WORDS` gives ``Analysis()`` (no statements, no
    error) without being parsed into a tree. A tracker treats both alike: such
    statements change nothing it follows, and neither does text that does not
    parse.

    With ``check_syntax``, such text is still run through the parser (its
    statement splitter, which builds no tree: about half the cost of a parse),
    so ``error`` is exactly what :func:`analyze` gives: what a guard that
    refuses unparseable text needs.
    """
    if not sql:
        return _EMPTY
    if len(sql) > _ROLES_CACHED_TEXT_LIMIT:
        if mentions_role_words(sql):
            return analyze(sql)
        return _syntax(sql) if check_syntax else _EMPTY
    return _analyze_roles(sql, check_syntax)


#: Texts up to this length keep analyze_roles' own verdict (a cache hit is
#: cheaper than the word test); longer ones take the word test every time,
#: so this cache adds at most 8,192 short texts to what analyze keeps.
_ROLES_CACHED_TEXT_LIMIT: Final = 1024


@lru_cache(maxsize=8192)
def _analyze_roles(sql: str, check_syntax: bool) -> Analysis:
    if mentions_role_words(sql):
        return analyze(sql)
    return _syntax(sql) if check_syntax else _EMPTY


def _syntax(sql: str) -> Analysis:
    """``Analysis()``, or the parse error :func:`analyze` would report."""
    parser = _parser()
    try:
        parser.split(sql, with_parser=True)
    except parser.ParseError as exc:
        return Analysis(error=str(exc))
    except UnicodeError as exc:
        return _not_unicode(exc)
    return _EMPTY


def _not_unicode(exc: UnicodeError) -> Analysis:
    # Lone surrogates: no server would get this text.
    return Analysis(error=f"the text is not valid Unicode: {exc}")


def _analyze_text(sql: str) -> Analysis:
    parser = _parser()
    try:
        text = parser.parse_sql_json(sql)
    except parser.ParseError as exc:
        return Analysis(error=str(exc))
    except UnicodeError as exc:
        return _not_unicode(exc)
    plain = _plain_statements(text)
    if plain is not None:
        return Analysis(statements=plain)
    return _decoded(text)


def _decoded(text: str) -> Analysis:
    """The analysis of libpg_query's JSON ``text``, decoded and walked."""
    try:
        tree = json.loads(text)
    except RecursionError:
        # A deep expression (1 + 1 + ... a thousand times) that PostgreSQL
        # parses fine; the C decoder recurses, this one does not.
        tree = _loads_deep(text)
    # The tree walks look for a call named set_config and a write to
    # pg_settings; libpg_query's JSON spells both names out verbatim (it escapes
    # only quotes, backslashes and control characters), so text without them
    # needs no walk: most statements cost the parse and json.loads alone.
    deep = "set_config" in text or "pg_settings" in text
    statements = tuple(_statement(raw.get("stmt", {}), deep)
                       for raw in tree.get("stmts", ()))
    return Analysis(statements=statements)


#: Statement kinds :func:`_statement` may report something about even when the
#: text names neither set_config nor pg_settings (it reads their bodies).
_READ_KINDS: Final = frozenset({
    "VariableSetStmt", *_DEFAULT_SETTERS, "DiscardStmt", "TransactionStmt", "DoStmt",
    "CallStmt", *_FUNCTION_DEFINERS, "PrepareStmt", "ExecuteStmt", "DeallocateStmt",
    "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
})
_STATEMENT_TOKEN: Final = '"stmt":{"'
#: One shared, empty :class:`StatementInfo` per plain statement kind.
_PLAIN: dict[str, StatementInfo] = {}


def _plain_statements(text: str) -> tuple[StatementInfo, ...] | None:
    """The statements of libpg_query's JSON ``text`` when every one of them is
    plain (its :func:`_statement` would be just its node type), else None.

    Read from the text without decoding it: each statement is
    ``{"stmt":{"<Kind>":...`` (RawStmt is the only node with a field named
    ``stmt``, and a ``"`` inside a JSON string is escaped, so a string constant
    cannot fake one), and set_config and pg_settings are spelled out verbatim
    wherever the tree names them (see :func:`_decoded`).
    """
    if "set_config" in text or "pg_settings" in text:
        return None
    statements: list[StatementInfo] = []
    for kind in statement_kinds(text):
        if kind in _READ_KINDS:
            return None
        info = _PLAIN.get(kind)
        if info is None:
            info = _PLAIN[kind] = StatementInfo(node=kind)
        statements.append(info)
    return tuple(statements)


def statement_kinds(text: str) -> Iterator[str]:
    """The node type of each statement in libpg_query's JSON ``text``, in order,
    without decoding it: each statement is ``{"stmt":{"<Kind>":...`` (RawStmt is
    the only node with a field named ``stmt``, and a ``"`` inside a JSON string
    is escaped, so a string constant cannot fake one)."""
    position = text.find(_STATEMENT_TOKEN)
    while position != -1:
        start = position + len(_STATEMENT_TOKEN)
        end = text.find('"', start)
        yield text[start:end]
        position = text.find(_STATEMENT_TOKEN, end)


def lexing_hazard(sql: str) -> bool:
    """True when ``sql`` might lex differently on a server whose
    ``standard_conforming_strings`` is off, or whose client encoding can read
    a backslash as part of a character (see :func:`_lexing_hazard`)."""
    if "\\" not in sql:
        return False
    if len(sql) > CACHED_TEXT_LIMIT:
        return _lexing_hazard(sql)
    return _cached_lexing_hazard(sql)


@lru_cache(maxsize=4096)
def _cached_lexing_hazard(sql: str) -> bool:
    return _lexing_hazard(sql)


def _lexing_hazard(sql: str) -> bool:
    """True when ``sql`` might lex differently on a server whose
    ``standard_conforming_strings`` is off, or whose client encoding is one
    (SJIS, BIG5, GBK...) that can read a backslash as part of a character.

    Both lexers agree on everything before the first backslash inside an
    ordinary string constant (``'...'``, ``N'...'``, ``U&'...'``): up to
    there their rules are the same. So text is safe when no such backslash
    exists (found with PostgreSQL's own scanner), and when no backslash
    directly follows a non-ASCII character (the only byte such an encoding
    could swallow that changes lexing is a backslash).
    """
    if "\\" not in sql:
        return False
    position = sql.find("\\")
    while position != -1:
        if position and not sql[position - 1].isascii():
            return True
        position = sql.find("\\", position + 1)
    parser = _parser()
    try:
        tokens = parser.scan(sql)
    except (parser.ParseError, UnicodeError):
        return True  # cannot tell where strings are: assume the worst
    for token in tokens:
        if token.name in ("SCONST", "USCONST"):
            text = sql[token.start:token.end + 1]
            if (text.startswith("'") or token.name == "USCONST") and "\\" in text:
                return True
    return False


def _parser() -> Any:
    try:
        import pglast.parser  # noqa: PLC0415 - optional: only the guard needs it
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ModuleNotFoundError(
            "role analysis needs pglast (PostgreSQL's parser): pip install 'pgwire[sql]'"
        ) from exc
    return pglast.parser


# -- one statement ------------------------------------------------------------------------


def _statement(node: dict[str, Any], deep: bool = True) -> StatementInfo:
    kind, body = next(iter(node.items())) if node else ("", {})
    actions: list[RoleAction] = []
    changes_lexing = False
    transaction = savepoint = None
    if kind == "VariableSetStmt":
        action, changes_lexing = _variable_set(body, deferred=False)
        if action is not None:
            actions.append(action)
    elif kind in _DEFAULT_SETTERS:
        setting = body.get("setstmt", {})
        name = str(setting.get("name", "")).lower()
        if name in ROLE_SETTINGS or setting.get("kind") == "VAR_RESET_ALL":
            actions.append(RoleAction("alter_role_default", _first_value(setting),
                                      detail=f"{kind}: {name or 'RESET ALL'}"))
    elif kind == "DiscardStmt":
        if body.get("target") == "DISCARD_ALL":
            actions.append(RoleAction("discard_all", reset=True))
            changes_lexing = True
    elif kind == "TransactionStmt":
        transaction = _TRANSACTION_KINDS.get(body.get("kind", ""))
        savepoint = body.get("savepoint_name")
    elif kind == "DoStmt":
        actions.append(RoleAction("do_block"))
    elif kind == "CallStmt":
        actions.append(RoleAction("call", detail=_function_name(body.get("funccall", {}))))
    elif kind in _FUNCTION_DEFINERS:
        actions.append(_function_definition(kind, body))
    # set_config anywhere in the tree (function definitions report theirs above).
    if deep and kind not in _FUNCTION_DEFINERS:
        calls, writes_settings = _search(body, kind)
        if writes_settings:
            actions.append(RoleAction("settings_table", detail=kind))
        later = kind not in _RUNS_NOW or not _executes(kind, body)
        for call in calls:
            action, lexing = _set_config(call, deferred=later)
            changes_lexing = changes_lexing or lexing
            if action is not None:
                actions.append(action)
    prepared = body.get("name") if kind in ("PrepareStmt", "ExecuteStmt",
                                            "DeallocateStmt") else None
    if kind in ("DeclareCursorStmt", "FetchStmt", "ClosePortalStmt"):
        prepared = body.get("portalname")
    return StatementInfo(node=kind, actions=tuple(actions), transaction=transaction,
                         savepoint=savepoint, changes_lexing=changes_lexing,
                         prepared=None if prepared is None else str(prepared))


def _variable_set(body: dict[str, Any], *, deferred: bool) -> tuple[RoleAction | None, bool]:
    """A SET/RESET: (its role action, whether it may change lexing)."""
    set_kind = body.get("kind", "")
    name = str(body.get("name", "")).lower()
    local = bool(body.get("is_local", False))
    if set_kind == "VAR_RESET_ALL":
        # RESET ALL never resets role or session_authorization (both are
        # GUC_NO_RESET_ALL), but it does reset standard_conforming_strings.
        return None, True
    lexing = name in LEXING_SETTINGS
    if name not in ROLE_SETTINGS:
        return None, lexing
    action_kind = "set_role" if name == "role" else "set_session_authorization"
    if set_kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        return RoleAction(action_kind, reset=True, local=local, deferred=deferred), False
    if set_kind == "VAR_SET_CURRENT":
        # SET role FROM CURRENT keeps the value the session has.
        return None, False
    args = body.get("args", ())
    value = _literal_text(args[0]) if len(args) == 1 else None
    if value is None:
        return RoleAction(action_kind, local=local, deferred=deferred,
                          detail="the value is not a single literal"), False
    if action_kind == "set_role" and value == "none":
        return RoleAction(action_kind, none=True, local=local, deferred=deferred), False
    return RoleAction(action_kind, value, local=local, deferred=deferred), False


def _function_definition(kind: str, body: dict[str, Any]) -> RoleAction:
    """CREATE/ALTER FUNCTION or PROCEDURE: its SET clauses and SQL body."""
    options = [*body.get("options", ()), *body.get("actions", ())]
    language = ""
    for option in options:
        element = option.get("DefElem", {})
        if element.get("defname") == "set":
            setting = element.get("arg", {}).get("VariableSetStmt", {})
            if str(setting.get("name", "")).lower() in ROLE_SETTINGS:
                return RoleAction("function_definition", _first_value(setting),
                                  deferred=True, detail="SET clause")
        elif element.get("defname") == "language":
            language = str(element.get("arg", {}).get("String", {}).get("sval", "")).lower()
    inner: list[RoleAction] = []
    if "sql_body" in body:  # BEGIN ATOMIC ... END: already parsed
        for call in _set_config_calls(body["sql_body"]):
            action, _ = _set_config(call, deferred=True)
            if action is not None:
                inner.append(action)
    elif kind == "CreateFunctionStmt":
        source = _function_source(options)
        if language == "sql" and source is not None:
            nested = analyze(source)
            if nested.error is not None:
                return RoleAction("function_definition", deferred=True,
                                  detail=f"SQL body does not parse: {nested.error}")
            inner.extend(a for a in nested.actions)
        elif source is not None or language:
            return RoleAction("function_definition", deferred=True,
                              detail=f"opaque body (LANGUAGE {language or 'unknown'})")
    if inner:
        return RoleAction("function_definition", inner[0].target, deferred=True,
                          detail=f"SQL body: {inner[0].kind}")
    return RoleAction("function_definition", deferred=True, detail="no role change")


def _function_source(options: list[dict[str, Any]]) -> str | None:
    for option in options:
        element = option.get("DefElem", {})
        if element.get("defname") == "as":
            arg = element.get("arg", {})
            parts = arg.get("List", {}).get("items", ()) if isinstance(arg, dict) else arg
            if isinstance(parts, list) and parts and isinstance(parts[0], dict):
                return str(parts[0].get("String", {}).get("sval", ""))
            return ""
    return None


# -- set_config ----------------------------------------------------------------------------


def _search(body: dict[str, Any], kind: str) -> tuple[list[dict[str, Any]], bool]:
    """One walk: every set_config call, and whether pg_settings is written
    (by the statement itself, a data-modifying CTE, a rule action...)."""
    calls: list[dict[str, Any]] = []
    writes = kind in _WRITES and _is_pg_settings(body.get("relation"))
    stack: list[object] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            call = node.get("FuncCall")
            if call is not None and _function_name(call) == "set_config":
                calls.append(call)
            if not writes:
                for write in _WRITES:
                    inner = node.get(write)
                    if isinstance(inner, dict) and _is_pg_settings(inner.get("relation")):
                        writes = True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    calls.sort(key=lambda call: int(call.get("location", 0)))  # in the order they appear
    return calls, writes


def _set_config_calls(tree: object) -> Iterator[dict[str, Any]]:
    """Every call of a function named set_config, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            call = node.get("FuncCall")
            if call is not None and _function_name(call) == "set_config":
                yield call
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _set_config(call: dict[str, Any], *, deferred: bool) -> tuple[RoleAction | None, bool]:
    arguments: dict[str, object] = {}
    positional = 0
    for argument in call.get("args", ()):
        named = argument.get("NamedArgExpr") if isinstance(argument, dict) else None
        if named is not None:
            arguments[str(named.get("name", ""))] = named.get("arg")
        elif positional < len(_SET_CONFIG_PARAMETERS):
            arguments[_SET_CONFIG_PARAMETERS[positional]] = argument
            positional += 1
    name_node = arguments.get("setting_name")
    literal = _literal_text(name_node) if name_node is not None else None
    if literal is None or call.get("func_variadic"):
        return RoleAction("dynamic_set_config", deferred=deferred,
                          detail="the setting name is not a literal"), True
    name = literal.lower()
    if name not in ROLE_SETTINGS:
        return None, name in LEXING_SETTINGS
    kind = "set_role" if name == "role" else "set_session_authorization"
    local = _literal_bool(arguments.get("is_local"))
    value_node = arguments.get("new_value")
    if isinstance(value_node, dict) and value_node.get("A_Const", {}).get("isnull"):
        return RoleAction(kind, reset=True, local=bool(local), deferred=deferred,
                          detail="set_config"), False
    value = _literal_text(value_node) if value_node is not None else None
    if value is None:
        parameter = _parameter_number(value_node)
        detail = ("set_config with its value in a parameter" if parameter is not None
                  else "set_config with a value that is not a literal")
        return RoleAction(kind, local=bool(local), deferred=deferred, detail=detail,
                          parameter=parameter), False
    if kind == "set_role" and value == "none":
        return RoleAction(kind, none=True, local=bool(local), deferred=deferred,
                          detail="set_config"), False
    return RoleAction(kind, value, local=bool(local), deferred=deferred,
                      detail="set_config"), False


# -- small readers -------------------------------------------------------------------------


def _function_name(call: dict[str, Any]) -> str:
    names = call.get("funcname", ())
    if not names:
        return ""
    return str(names[-1].get("String", {}).get("sval", ""))


def _literal_text(node: object) -> str | None:
    """The text of a string or number constant; None for anything else."""
    if not isinstance(node, dict):
        return None
    constant = node.get("A_Const")
    if constant is None or constant.get("isnull"):
        return None
    if "sval" in constant:
        return str(constant["sval"].get("sval", ""))
    if "ival" in constant:
        return str(constant["ival"].get("ival", 0))
    if "fval" in constant:
        return str(constant["fval"].get("fval", ""))
    return None


def _parameter_number(node: object) -> int | None:
    """``n`` for a bare ``$n`` (no cast, no expression); None for anything else."""
    if not isinstance(node, dict):
        return None
    reference = node.get("ParamRef")
    if reference is None:
        return None
    number = reference.get("number")
    return number if isinstance(number, int) and number > 0 else None


def _literal_bool(node: object) -> bool | None:
    if not isinstance(node, dict):
        return None
    constant = node.get("A_Const")
    if constant is None:
        return None
    if "boolval" in constant:
        return bool(constant["boolval"].get("boolval", False))
    text = _literal_text(node)
    if text is None:
        return None
    return text.strip().lower() in ("t", "tr", "tru", "true", "y", "ye", "yes", "on", "1")


def _first_value(setting: dict[str, Any]) -> str | None:
    args = setting.get("args", ())
    return _literal_text(args[0]) if args else None


def _is_pg_settings(relation: object) -> bool:
    if not isinstance(relation, dict):
        return False
    return str(relation.get("relname", "")) == "pg_settings"


def _executes(kind: str, body: dict[str, Any]) -> bool:
    """Whether the statement runs its query now: EXPLAIN only with ANALYZE,
    CREATE TABLE/MATERIALIZED VIEW AS only without WITH NO DATA."""
    if kind == "ExplainStmt":
        for option in body.get("options", ()):
            element = option.get("DefElem", {})
            if str(element.get("defname", "")).lower() == "analyze":
                return _option_true(element.get("arg"))
        return False
    if kind == "CreateTableAsStmt":
        return not body.get("into", {}).get("skipData", False)
    return True


def _option_true(arg: object) -> bool:
    """A boolean option as PostgreSQL's defGetBoolean reads it (no value is true)."""
    if arg is None:
        return True
    if isinstance(arg, dict):
        if "Integer" in arg:
            return bool(arg["Integer"].get("ival", 0))
        if "Boolean" in arg:
            return bool(arg["Boolean"].get("boolval", False))
        text = str(arg.get("String", {}).get("sval", "")).lower()
        return text in ("true", "on", "1", "yes", "y", "t", "tr", "tru", "ye")
    return True


def _loads_deep(text: str) -> Any:
    """``json.loads`` without recursion, for trees nested thousands deep."""
    decoder = json.JSONDecoder()
    scan_string = json.decoder.scanstring  # type: ignore[attr-defined]
    containers: list[Any] = []
    keys: list[str | None] = []
    position = 0
    length = len(text)
    result: Any = None
    while position < length:
        char = text[position]
        if char in " \t\n\r,:":
            position += 1
            continue
        if char in "{[":
            containers.append({} if char == "{" else [])
            keys.append(None)
            position += 1
            continue
        if char in "}]":
            value = containers.pop()
            keys.pop()
            position += 1
        elif char == '"' and containers and isinstance(containers[-1], dict) and (
            keys[-1] is None
        ):
            keys[-1], position = scan_string(text, position + 1)
            continue
        else:
            value, position = decoder.raw_decode(text, position)
        if not containers:
            result = value
            continue
        parent = containers[-1]
        if isinstance(parent, dict):
            parent[keys[-1]] = value
            keys[-1] = None
        else:
            parent.append(value)
    return result
