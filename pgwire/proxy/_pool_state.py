"""What session state a SQL text may leave behind, for a transaction-mode pool.

A pool in transaction mode hands the server connection back at every
ReadyForQuery 'I', so whatever a statement leaves in the *session* (past its
transaction) would reach the next client: a setting, a role, a prepared
statement, a LISTEN, a temporary object, a held cursor, a session advisory
lock, a sequence's currval/lastval. :func:`analyze_session_state` reads a
Query or Parse text with PostgreSQL's own grammar (pglast, as
:mod:`pgwire.roles._sql` does) and names the kinds of such state it may create
(:data:`SESSION_STATE_KINDS`).

What counts, statement by statement:

- ``settings``: a session-level ``SET``/``RESET``/``RESET ALL`` in every
  spelling (``SET TIME ZONE``, ``SET NAMES``, ``SET SCHEMA``, ``SET XML
  OPTION``, ``SET SEED``, ``SET ... FROM CURRENT``, ``SET SESSION
  CHARACTERISTICS AS TRANSACTION``), inside a transaction block or not, and
  ``set_config(name, value, false)``. ``SET LOCAL``, ``set_config(..., true)``
  and ``SET TRANSACTION`` end with their transaction; ``ALTER ROLE/DATABASE/
  SYSTEM ... SET`` and a function's ``SET`` clause never touch this session.
- ``role``: the same for ``role`` and ``session_authorization`` (``SET ROLE``,
  ``RESET ROLE``, ``SET SESSION AUTHORIZATION``...), which never count as
  ``settings``. ``RESET ALL`` leaves the role alone (PostgreSQL marks both
  settings GUC_NO_RESET_ALL), so it counts as ``settings`` only.
- ``prepare`` (SQL ``PREPARE``), ``listen`` (``LISTEN``), ``cursor``
  (``DECLARE ... WITH HOLD``).
- ``temp``: an object created as ``TEMP``/``TEMPORARY`` (table, view,
  sequence, ``CREATE TABLE AS``, ``SELECT INTO``) or named in ``pg_temp``
  (tables, types, domains, functions, aggregates, indexes...). A temporary
  table ``ON COMMIT DROP`` is gone when its transaction ends and does not count.
- ``advisory`` (the session-level ``pg_advisory_lock``/``pg_try_advisory_lock``
  and their ``_shared`` forms) and ``sequence`` (``nextval``/``setval``): a call
  anywhere in any expression, schema-less or ``pg_catalog.``-qualified.
- ``unknown``: ``DO``, ``CALL``, ``LOAD``, text the parser rejects, a
  ``set_config`` whose name or ``is_local`` is not a constant, and a write to
  ``pg_settings`` (its rule calls ``set_config`` for rows known only at run time).

Every statement's whole tree is searched (CTEs, subqueries, ``EXPLAIN
ANALYZE``, ``COPY (query)``, ``CREATE TABLE AS``, function arguments). A call
inside a definition — a view, a rule, a column default, ``PREPARE``,
``DECLARE`` — counts as if it ran now: the text that later runs it will not
show it, so the definition is the last chance to see it. Function and
procedure definitions are the exception: neither their ``SET`` clauses nor
their bodies run by being defined (only a name in ``pg_temp`` counts). A plain
``EXPLAIN`` (without ``ANALYZE``) runs nothing and reports nothing.

What this cannot see (the pool must live with these gaps, or pin):

- code the text calls but does not contain: ``SELECT f()`` where ``f`` takes an
  advisory lock or calls ``set_config(..., false)``, triggers, rules, views,
  column defaults (an INSERT into a ``serial`` column sets lastval through an
  unseen ``nextval``), ``EXECUTE`` of a statement prepared earlier. ``DO``
  and ``CALL`` exist to run such code and report ``unknown``; a ``SELECT`` of a
  function does not, or every query would.
- a view made temporary because it reads a temporary table (PostgreSQL does
  this silently), unless the text names ``pg_temp``;
- session state outside these kinds: ``setseed()``, extension state (dblink
  connections, loaded libraries' globals), and protocol-level named
  statements and portals (the pool sees Parse and Bind itself).

The analysis says what a text *may* create, not what it will: a statement
that fails or is rolled back creates nothing, a call under a ``CASE`` branch or
a ``WHERE`` that matches no row may never run, ``setval(s, n, false)`` leaves
currval undefined, and a ``DEALLOCATE`` or ``CLOSE`` later in the same text is
not subtracted. ``discard_all`` reports ``DISCARD ALL``, which clears every kind.
Results are cached by text (texts up to
:data:`pgwire.roles._sql.CACHED_TEXT_LIMIT` characters), so a repeated
statement costs one dictionary lookup, and a text whose parse tree names none
of the statements or functions above skips the tree walk altogether.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from ..roles._sql import (
    _SET_CONFIG_PARAMETERS,
    _WRITES,
    CACHED_TEXT_LIMIT,
    _executes,
    _function_name,
    _is_pg_settings,
    _literal_bool,
    _literal_text,
    _loads_deep,
    _parser,
    mentions_any,
    statement_kinds,
)
from ..roles._state import ROLE_SETTINGS

__all__ = ["SESSION_STATE_KINDS", "StateEffects", "analyze_session_state"]

SESSION_STATE_KINDS: Final[tuple[str, ...]] = (
    "settings",
    "role",
    "prepare",
    "listen",
    "temp",
    "cursor",
    "advisory",
    "sequence",
    "unknown",
)


@dataclass(frozen=True, slots=True)
class StateEffects:
    """The session state one SQL text may create, by kind."""

    #: Kinds from :data:`SESSION_STATE_KINDS` the text may create.
    adds: frozenset[str]
    #: The text contains ``DISCARD ALL`` (which clears every kind on success).
    discard_all: bool
    #: Lower-cased names of the settings set or reset at session level
    #: (``role`` and ``session_authorization`` included; ``all`` for RESET
    #: ALL), for reporting.
    settings_changed: frozenset[str]


_NOTHING: Final = StateEffects(adds=frozenset(), discard_all=False,
                               settings_changed=frozenset())
_UNPARSEABLE: Final = StateEffects(adds=frozenset({"unknown"}), discard_all=False,
                                   settings_changed=frozenset())

#: Session-level calls, by the name pglast gives them (lower-cased here).
_CALLS: Final = {
    "pg_advisory_lock": "advisory",
    "pg_advisory_lock_shared": "advisory",
    "pg_try_advisory_lock": "advisory",
    "pg_try_advisory_lock_shared": "advisory",
    "nextval": "sequence",
    "setval": "sequence",
}
#: Statements that matter only at the top of a statement (none of them nests).
_TOP_LEVEL: Final = frozenset({
    "VariableSetStmt", "PrepareStmt", "ListenStmt", "DeclareCursorStmt", "DoStmt",
    "CallStmt", "LoadStmt", "DiscardStmt",
})
_FUNCTION_DEFINERS: Final = frozenset({"CreateFunctionStmt", "AlterFunctionStmt"})
#: Where each creating statement keeps the name of what it creates.
_CREATED_NAME: Final[dict[str, tuple[str, ...]]] = {
    "CreateStmt": ("relation",),
    "CreateTableAsStmt": ("into", "rel"),
    "SelectStmt": ("intoClause", "rel"),
    "ViewStmt": ("view",),
    "CreateSeqStmt": ("sequence",),
    "CompositeTypeStmt": ("typevar",),
    "CreateFunctionStmt": ("funcname",),
    "CreateDomainStmt": ("domainname",),
    "CreateEnumStmt": ("typeName",),
    "CreateRangeStmt": ("typeName",),
    "DefineStmt": ("defnames",),
    "IndexStmt": ("relation",),
}
#: Where ON COMMIT sits for the statements that accept it.
_ON_COMMIT: Final[dict[str, tuple[str, ...]]] = {
    "CreateStmt": ("oncommit",),
    "CreateTableAsStmt": ("into", "onCommit"),
    "SelectStmt": ("intoClause", "onCommit"),
}
#: SET SESSION CHARACTERISTICS AS TRANSACTION sets these defaults.
_CHARACTERISTICS_PREFIX: Final = "default_"
_CURSOR_OPT_HOLD: Final = 0x0020

# Pre-filters on libpg_query's JSON text: it spells node and function names out
# verbatim (it escapes only quotes, backslashes and control characters), so a
# tree whose text lacks all of them needs no decoding and no walk.
_CALL_NODE_TOKEN: Final = '"FuncCall"'
_CALL_TOKENS: Final = ("set_config", "advisory_lock", "nextval", "setval")
_TEMP_TOKENS: Final = ("pg_temp", '"relpersistence":"t"')
_SETTINGS_TABLE_TOKEN: Final = "pg_settings"


def analyze_session_state(sql: str) -> StateEffects:
    """The session state ``sql`` may create (see the module docstring for
    what counts and what cannot be seen). Never raises for any ``str``:
    text PostgreSQL's parser rejects reports ``unknown``."""
    if len(sql) > CACHED_TEXT_LIMIT:
        return _analyze_text(sql)
    return _analyze(sql)


@lru_cache(maxsize=8192)
def _analyze(sql: str) -> StateEffects:
    return _analyze_text(sql)


#: Text with none of these (in any case) can create no session state if the server
#: accepts it, and none if it rejects it: every statement kind and function above
#: needs one of them spelled out, since keywords cannot be escaped and a ``U&``
#: identifier (which could spell a function name) sends the text to the parser.
#: (Substring tests of the lower-cased text: ten times faster than one regular
#: expression with these alternatives.)
_WORDS: Final = ("set", "prepare", "listen", "declare", "hold", "do", "call", "load",
                 "discard", "temp", "advisory", "nextval", "u&")


def _analyze_text(sql: str) -> StateEffects:
    if not mentions_any(sql, _WORDS):
        return _NOTHING
    parser = _parser()
    try:
        text: str = parser.parse_sql_json(sql)
    except (parser.ParseError, UnicodeError):
        return _UNPARSEABLE
    calls = _CALL_NODE_TOKEN in text
    if calls:  # function names match case-insensitively
        lowered = text.lower()
        calls = any(token in lowered for token in _CALL_TOKENS)
    temp = _TEMP_TOKENS[0] in text or _TEMP_TOKENS[1] in text
    settings_table = _SETTINGS_TABLE_TOKEN in text
    if not (calls or temp or settings_table) and _TOP_LEVEL.isdisjoint(statement_kinds(text)):
        return _NOTHING
    try:
        tree = json.loads(text)
    except RecursionError:  # thousands deep: PostgreSQL parses it, json.loads recurses
        tree = _loads_deep(text)
    found = _Found(calls=calls, temp=temp, settings_table=settings_table)
    for raw in tree.get("stmts", ()):
        node = raw.get("stmt", {})
        if node:
            found.statement(node)
    if not (found.adds or found.discard_all):
        return _NOTHING
    return StateEffects(adds=frozenset(found.adds), discard_all=found.discard_all,
                        settings_changed=frozenset(found.settings))


class _Found:
    """What the statements of one text add up to, gathered while walking them."""

    __slots__ = ("adds", "calls", "discard_all", "settings", "settings_table", "temp")

    def __init__(self, *, calls: bool, temp: bool, settings_table: bool) -> None:
        self.adds: set[str] = set()
        self.settings: set[str] = set()
        self.discard_all = False
        # Which searches the walk needs (from the pre-filters).
        self.calls = calls
        self.temp = temp
        self.settings_table = settings_table

    def statement(self, node: dict[str, Any]) -> None:
        kind, body = next(iter(node.items()))
        if not isinstance(body, dict):
            return
        if kind in _TOP_LEVEL:
            self._top_level(kind, body)
        elif kind == "ExplainStmt" and not _executes(kind, body):
            return  # plain EXPLAIN plans its query and runs none of it
        elif kind in _FUNCTION_DEFINERS:
            # Neither a SET clause nor the body runs by being defined.
            if self.temp and kind in _CREATED_NAME:
                self._created(kind, body)
            return
        if self.calls or self.temp or self.settings_table:
            self._walk(node)

    def _top_level(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "VariableSetStmt":
            self._variable_set(body)
        elif kind == "PrepareStmt":
            self.adds.add("prepare")
        elif kind == "ListenStmt":
            self.adds.add("listen")
        elif kind == "DeclareCursorStmt":
            options = body.get("options", 0)
            if isinstance(options, int) and options & _CURSOR_OPT_HOLD:
                self.adds.add("cursor")
        elif kind == "DiscardStmt":
            if body.get("target") == "DISCARD_ALL":
                self.discard_all = True
        else:  # DO, CALL, LOAD: code or libraries the text does not show
            self.adds.add("unknown")

    def _variable_set(self, body: dict[str, Any]) -> None:
        if body.get("is_local"):
            return  # SET LOCAL ends with its transaction
        set_kind = body.get("kind", "")
        name = str(body.get("name", "")).lower()
        if set_kind == "VAR_RESET_ALL":
            self.adds.add("settings")
            self.settings.add("all")
        elif set_kind == "VAR_SET_MULTI":
            if name == "session characteristics":
                self.adds.add("settings")
                for argument in body.get("args", ()):
                    element = argument.get("DefElem", {}) if isinstance(argument, dict) else {}
                    option = str(element.get("defname", "")).lower()
                    if option:
                        self.settings.add(_CHARACTERISTICS_PREFIX + option)
            elif not name.startswith("transaction"):
                self.adds.add("unknown")  # a SET form this module does not know
            # SET TRANSACTION ... and SET TRANSACTION SNAPSHOT: this transaction only.
        else:
            self._setting(name)

    def _setting(self, name: str) -> None:
        self.adds.add("role" if name in ROLE_SETTINGS else "settings")
        self.settings.add(name)

    def _walk(self, root: dict[str, Any]) -> None:
        stack: list[object] = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for key, value in item.items():
                    if isinstance(value, dict):
                        if key == "FuncCall":
                            if self.calls:
                                self._call(value)
                        elif self.temp and key in _CREATED_NAME:
                            self._created(key, value)
                        elif (self.settings_table and key in _WRITES
                              and _is_pg_settings(value.get("relation"))):
                            self.adds.add("unknown")
                        stack.append(value)
                    elif isinstance(value, list):
                        stack.append(value)
            elif isinstance(item, list):
                stack.extend(item)

    def _call(self, call: dict[str, Any]) -> None:
        name = _catalog_function(call)
        if name is None:
            return
        if name == "set_config":
            self._set_config(call)
        else:
            kind = _CALLS.get(name)
            if kind is not None:
                self.adds.add(kind)

    def _set_config(self, call: dict[str, Any]) -> None:
        arguments: dict[str, object] = {}
        positional = 0
        for argument in call.get("args", ()):
            named = argument.get("NamedArgExpr") if isinstance(argument, dict) else None
            if named is not None:
                arguments[str(named.get("name", "")).lower()] = named.get("arg")
            elif positional < len(_SET_CONFIG_PARAMETERS):
                arguments[_SET_CONFIG_PARAMETERS[positional]] = argument
                positional += 1
        name = _constant_text(arguments.get("setting_name"))
        is_local = _constant_bool(arguments.get("is_local"))
        if call.get("func_variadic") or name is None or is_local is None:
            self.adds.add("unknown")
        elif not is_local:
            self._setting(name.lower())

    def _created(self, kind: str, body: dict[str, Any]) -> None:
        target: object = body
        for key in _CREATED_NAME[kind]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):  # a RangeVar
            temporary = (target.get("relpersistence") == "t"
                         or _is_temp_schema(target.get("schemaname")))
        elif isinstance(target, list) and len(target) >= 2:  # a qualified name
            schema = target[-2]
            temporary = isinstance(schema, dict) and _is_temp_schema(
                schema.get("String", {}).get("sval"))
        else:
            return
        if not temporary:
            return
        on_commit: object = body
        for key in _ON_COMMIT.get(kind, ()):
            on_commit = on_commit.get(key) if isinstance(on_commit, dict) else None
        if on_commit != "ONCOMMIT_DROP":  # dropped with its transaction: no session state
            self.adds.add("temp")


def _catalog_function(call: dict[str, Any]) -> str | None:
    """The lower-cased name of a call that may reach a ``pg_catalog`` function
    (schema-less or qualified with ``pg_catalog``); None for any other schema."""
    names = call.get("funcname", ())
    if not isinstance(names, list) or not names:
        return None
    if len(names) > 1:
        schema = names[-2].get("String", {}).get("sval", "") if isinstance(names[-2],
                                                                           dict) else ""
        if str(schema).lower() != "pg_catalog":
            return None
    return _function_name(call).lower()


def _is_temp_schema(name: object) -> bool:
    """``pg_temp`` (this session's temporary schema) or ``pg_temp_N`` (its real name)."""
    # Compared as PostgreSQL does: a quoted "PG_TEMP" is some other schema.
    return isinstance(name, str) and (name == "pg_temp" or name.startswith("pg_temp_"))


def _uncast(node: object) -> object:
    """The operand under any number of ``::type`` casts."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return node


def _constant_text(node: object) -> str | None:
    return _literal_text(_uncast(node))


def _constant_bool(node: object) -> bool | None:
    """A constant ``is_local``; NULL reads as false, as set_config reads it."""
    node = _uncast(node)
    if isinstance(node, dict) and node.get("A_Const", {}).get("isnull"):
        return False
    return _literal_bool(node)
