"""A proxy that lets clients read and refuses every write, as a read-only server would.

    python examples/read_only.py --listen 127.0.0.1:6432 --upstream 127.0.0.1:5432

Clients log in through the proxy with their own credentials (the login is
relayed to the server). Statements that may write are refused with SQLSTATE
25006 and PostgreSQL's own wording, "cannot execute INSERT in a read-only
transaction", and the server fails the statement too, so a transaction block
ends up failed on both sides exactly as if the server had refused it.

Two layers do the work:

1. The statement check (this file). Every statement of a simple Query, every
   Parse of the extended protocol, is classified; anything not clearly
   read-only counts as a write. It runs on PostgreSQL's own grammar through
   pglast (the ``sql`` extra) when that is installed, and otherwise on a small
   conservative lexer that knows quoting, comments and dollar quoting but no
   grammar, so it refuses more (EXPLAIN ANALYZE of anything, for one).
2. The server's own check. ``default_transaction_read_only=on`` is put in the
   startup packet, so PostgreSQL refuses writes no SQL text shows: a function
   or view that writes, a trigger, a custom operator. The statement check in
   turn refuses whatever would switch that setting off (SET, RESET,
   BEGIN READ WRITE, set_config()), and FunctionCall messages, which name a
   function by OID only.

Function calls: the few built-in functions that write or change the server
(nextval, setval, set_config on the read-only settings, pg_terminate_backend,
lo_*, dblink*, ...) are refused by name; any other function is let through
and left to layer 2. ``EXECUTE`` of a prepared statement is read-only: every
PREPARE and Parse went through the check when it was created.

A multi-statement Query with one write in it is refused whole: the client gets
the error alone, without the results of the statements before the write.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import re
import signal
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from pgwire.adapters import parse_address
from pgwire.adapters.asyncio import run, start_proxy
from pgwire.middleware import Context, Middleware, Reject, StartupVerdict, Verdict
from pgwire.protocol import FunctionCall, Message, Parse, Query, StartupMessage
from pgwire.proxy import ProxyConfig

try:
    import pglast
    from pglast import ast as pg_ast
except ImportError:  # the optional ``sql`` extra
    HAVE_PGLAST = False
else:
    HAVE_PGLAST = True

__all__ = ["ReadOnly", "keyword_write_command", "pglast_write_command", "write_command"]

READ_ONLY_SQLSTATE: Final = "25006"
#: Settings a client must not change: they are what keeps the server read-only.
PROTECTED_SETTINGS: Final = frozenset({"default_transaction_read_only", "transaction_read_only"})
#: Built-in functions that write, or change the server or other sessions.
WRITING_FUNCTIONS: Final = frozenset({
    "nextval", "setval", "set_config", "pg_terminate_backend", "pg_cancel_backend",
    "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point",
    "pg_promote", "pg_logical_emit_message", "pg_import_system_collations",
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot", "pg_replication_slot_advance",
    "lowrite", "pg_file_write", "pg_file_rename", "pg_file_unlink",
})
WRITING_FUNCTION_PREFIXES: Final = ("lo_", "dblink", "pg_stat_reset", "pg_replication_origin_")


def write_command(sql: str) -> str | None:
    """The command name of the first statement in ``sql`` that may write, or None.

    pglast decides when installed (the keyword lexer when pglast cannot parse
    the text); otherwise the keyword lexer. Backslashes inside string literals
    mean different things under ``standard_conforming_strings`` on and off, so
    text with a backslash is also read the old way and refused if either
    reading finds a write.
    """
    found = pglast_write_command(sql) if HAVE_PGLAST else keyword_write_command(sql)
    if found is None and "\\" in sql:
        found = keyword_write_command(sql, backslash_escapes=True)
    return found


def _writing_function(name: str) -> bool:
    name = name.lower()
    return name in WRITING_FUNCTIONS or name.startswith(WRITING_FUNCTION_PREFIXES)


# -- command names, as PostgreSQL's messages put them ------------------------------------

_CREATE_MODIFIERS: Final = frozenset({
    "OR", "REPLACE", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "TRUSTED",
    "PROCEDURAL", "RECURSIVE", "DEFAULT", "CONSTRAINT",
})
_TWO_WORD_OBJECTS: Final = frozenset({"MATERIALIZED", "FOREIGN", "EVENT", "ACCESS", "TEXT",
                                      "USER", "OPERATOR"})
_VERB_NAMES: Final = {
    "TRUNCATE": "TRUNCATE TABLE", "LOCK": "LOCK TABLE", "SECURITY": "SECURITY LABEL",
    "REFRESH": "REFRESH MATERIALIZED VIEW", "IMPORT": "IMPORT FOREIGN SCHEMA",
}


def command_name(words: list[str]) -> str:
    """``CREATE TABLE``, ``DROP INDEX``, ``GRANT``...: the name PostgreSQL uses
    in its messages, from a statement's leading words (upper case)."""
    if not words:
        return "this statement"
    verb = words[0]
    if verb in _VERB_NAMES:
        return _VERB_NAMES[verb]
    if verb not in ("CREATE", "DROP", "ALTER"):
        return verb
    rest = words[1:]
    while rest and rest[0] in _CREATE_MODIFIERS:
        rest = rest[1:]
    if not rest:
        return verb
    if rest[0] in _TWO_WORD_OBJECTS and len(rest) > 1:
        return f"{verb} {rest[0]} {rest[1]}"
    if verb == "CREATE" and rest[0] == "TABLE" and "AS" in rest:
        return "CREATE TABLE AS"    # AS outside parentheses: a query fills the table
    return f"{verb} {rest[0]}"


# -- the keyword classifier: a lexer, no grammar ---------------------------------------------


class LexError(Exception):
    """Text the lexer cannot follow (an unterminated string, comment or identifier)."""


@dataclass(frozen=True, slots=True)
class Token:
    """``word`` (an unquoted keyword or name, upper-cased), ``ident`` (a quoted
    identifier, as written), ``op`` (one punctuation character), ``literal``."""

    kind: str
    text: str
    depth: int


_IDENT_START: Final = re.compile(r"[A-Za-z_\x80-\U0010ffff]")
_IDENT_REST: Final = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG: Final = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_NUMBER: Final = re.compile(r"[0-9.][A-Za-z0-9_.]*")


def _string_end(sql: str, start: int, backslash_escapes: bool) -> int:
    """Index just after the string literal whose opening quote is at ``start``."""
    pos = start + 1
    while True:
        quote = sql.find("'", pos)
        if quote < 0:
            raise LexError("unterminated quoted string")
        if backslash_escapes:
            backslash = sql.find("\\", pos, quote)
            if backslash >= 0:
                pos = backslash + 2
                continue
        if sql.startswith("'", quote + 1):   # '' is a quote inside the string
            pos = quote + 2
            continue
        return quote + 1


def _identifier_end(sql: str, start: int) -> tuple[int, str]:
    pos = start + 1
    parts = []
    while True:
        quote = sql.find('"', pos)
        if quote < 0:
            raise LexError("unterminated quoted identifier")
        parts.append(sql[pos:quote])
        if sql.startswith('"', quote + 1):
            parts.append('"')
            pos = quote + 2
            continue
        return quote + 1, "".join(parts)


def _comment_end(sql: str, start: int) -> int:
    """Index after the block comment at ``start``; they nest in PostgreSQL."""
    depth = 0
    pos = start
    while True:
        opening = sql.find("/*", pos)
        closing = sql.find("*/", pos)
        if closing < 0:
            raise LexError("unterminated /* comment")
        if 0 <= opening < closing:
            depth += 1
            pos = opening + 2
        else:
            depth -= 1
            pos = closing + 2
            if depth == 0:
                return pos


def statements(sql: str, *, backslash_escapes: bool = False) -> Iterator[list[Token]]:
    """The tokens of each ``;``-separated statement of ``sql``.

    ``backslash_escapes`` reads '...' strings as with
    ``standard_conforming_strings = off``. Splitting happens at every ``;``
    outside literals, even inside parentheses: a statement split too finely is
    refused rather than missed.
    """
    tokens: list[Token] = []
    depth = 0
    pos = 0
    size = len(sql)
    while pos < size:
        char = sql[pos]
        if char.isspace():
            pos += 1
        elif sql.startswith("--", pos):
            newline = sql.find("\n", pos)
            pos = size if newline < 0 else newline + 1
        elif sql.startswith("/*", pos):
            pos = _comment_end(sql, pos)
        elif char == "'":
            pos = _string_end(sql, pos, backslash_escapes)
            tokens.append(Token("literal", "'", depth))
        elif char == '"':
            pos, name = _identifier_end(sql, pos)
            tokens.append(Token("ident", name, depth))
        elif char == "$":
            tag = _DOLLAR_TAG.match(sql, pos)
            if tag is not None:
                closing = sql.find(tag.group(0), tag.end())
                if closing < 0:
                    raise LexError("unterminated dollar-quoted string")
                pos = closing + len(tag.group(0))
                tokens.append(Token("literal", "$", depth))
            else:   # $1: a parameter
                end = pos + 1
                while end < size and sql[end].isdigit():
                    end += 1
                tokens.append(Token("literal", sql[pos:end], depth))
                pos = max(end, pos + 1)
        elif _IDENT_START.match(char):
            rest = _IDENT_REST.match(sql, pos + 1)
            assert rest is not None
            word = sql[pos:rest.end()]
            pos = rest.end()
            lowered = word.lower()
            if sql.startswith("'", pos) and lowered in ("e", "b", "x", "n"):
                pos = _string_end(sql, pos, backslash_escapes or lowered == "e")
                tokens.append(Token("literal", "'", depth))
            elif lowered == "u" and sql.startswith("&'", pos):
                pos = _string_end(sql, pos + 1, backslash_escapes)
                tokens.append(Token("literal", "'", depth))
            elif lowered == "u" and sql.startswith('&"', pos):
                pos, name = _identifier_end(sql, pos + 1)
                tokens.append(Token("ident", name, depth))
            else:
                tokens.append(Token("word", word.upper(), depth))
        elif char.isdigit() or (char == "." and sql[pos + 1:pos + 2].isdigit()):
            number = _NUMBER.match(sql, pos)
            assert number is not None
            pos = number.end()
            tokens.append(Token("literal", number.group(0), depth))
        elif char == ";":
            if tokens:
                yield tokens
            tokens = []
            depth = 0
            pos += 1
        else:
            if char == "(":
                depth += 1
            elif char == ")":
                depth = max(0, depth - 1)
            tokens.append(Token("op", char, depth))
            pos += 1
    if tokens:
        yield tokens


_READ_STARTS: Final = frozenset({"SELECT", "VALUES", "TABLE", "WITH"})
_TRANSACTION_VERBS: Final = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT",
                                       "SAVEPOINT", "RELEASE"})
_HARMLESS_VERBS: Final = frozenset({"SHOW", "FETCH", "MOVE", "CLOSE", "DEALLOCATE", "DISCARD",
                                    "LISTEN", "UNLISTEN", "NOTIFY", "EXECUTE"})
_DML: Final = ("INSERT", "UPDATE", "DELETE", "MERGE")


def _read_write_name(verb: str) -> str:
    return f"{'START TRANSACTION' if verb == 'START' else verb} READ WRITE"


def _words(tokens: list[Token]) -> list[str]:
    return [t.text for t in tokens if t.kind == "word"]


def _has_pair(words: list[str], first: str, second: str) -> bool:
    return any(a == first and b == second for a, b in itertools.pairwise(words))


def _query_write(tokens: list[Token]) -> str | None:
    """A SELECT-like statement (or the query inside another): what in it may write."""
    words = _words(tokens)
    for index, word in enumerate(words):
        if word == "FOR" and index + 1 < len(words) and words[index + 1] in (
            "UPDATE", "SHARE", "NO", "KEY"
        ):
            clause = []
            for following in words[index + 1:index + 4]:
                clause.append(following)
                if following in ("UPDATE", "SHARE"):
                    break
            return "SELECT FOR " + " ".join(clause)
        if word in _DML:
            return word
        if word == "INTO":
            return "SELECT INTO"
    for callee, after in itertools.pairwise(tokens):
        if callee.kind in ("word", "ident") and after.text == "(" and (
            _writing_function(callee.text)
        ):
            return f"{callee.text.lower()}()"
    return None


def _keyword_statement_write(tokens: list[Token]) -> str | None:
    words = _words(tokens)
    if not words:
        return None     # only literals or punctuation: a syntax error for the server
    verb = words[0]
    if verb in _READ_STARTS:
        return _query_write(tokens)
    if verb in _TRANSACTION_VERBS:
        if _has_pair(words, "READ", "WRITE"):
            return _read_write_name(verb)
        if verb in ("COMMIT", "ROLLBACK") and "PREPARED" in words:
            return f"{verb} PREPARED"
        return None
    if verb in ("SET", "RESET"):
        names = {t.text.lower() for t in tokens if t.kind in ("word", "ident")}
        if names & PROTECTED_SETTINGS:
            return f"{verb} {sorted(names & PROTECTED_SETTINGS)[0]}"
        if _has_pair(words, "READ", "WRITE"):
            return " ".join(words)
        return None
    if verb in _HARMLESS_VERBS:
        return _query_write(tokens) if verb == "EXECUTE" else None
    if verb == "EXPLAIN":
        if "ANALYZE" not in words and "ANALYSE" not in words:
            return None
        for index, token in enumerate(tokens):
            if token.kind == "word" and token.text in (*_READ_STARTS, *_DML, "EXECUTE",
                                                         "DECLARE", "CREATE"):
                return _keyword_statement_write(tokens[index:])
        return "EXPLAIN ANALYZE"
    if verb == "DECLARE":
        # DECLARE name [options] CURSOR [WITH HOLD] FOR query
        for index, token in enumerate(tokens):
            if token.text == "FOR" and "CURSOR" in _words(tokens[:index]):
                return _keyword_statement_write(tokens[index + 1:]) if tokens[index + 1:] else (
                    "DECLARE CURSOR")
        return "DECLARE CURSOR"
    if verb == "PREPARE":
        if len(words) > 1 and words[1] == "TRANSACTION":
            return "PREPARE TRANSACTION"
        for index, token in enumerate(tokens):
            if token.kind == "word" and token.text == "AS" and token.depth == 0:
                return _keyword_statement_write(tokens[index + 1:])
        return "PREPARE"
    if verb == "COPY":
        outer = [t.text for t in tokens if t.kind == "word" and t.depth == 0]
        if "FROM" in outer:
            return "COPY FROM"
        if _has_pair(outer, "TO", "STDOUT"):
            return _query_write(tokens)
        return "COPY TO"    # a file or a program on the server
    return command_name(words)


def keyword_write_command(sql: str, *, backslash_escapes: bool = False) -> str | None:
    """The conservative classifier: a lexer and a list of read-only statement
    kinds. Text it cannot lex counts as a write."""
    try:
        for tokens in statements(sql, backslash_escapes=backslash_escapes):
            found = _keyword_statement_write(tokens)
            if found is not None:
                return found
    except LexError:
        return "this statement"
    return None


# -- the pglast classifier: PostgreSQL's own grammar --------------------------------------------


def _nodes(node: Any) -> Iterator[Any]:
    """``node`` and every node under it."""
    if isinstance(node, list | tuple):
        for item in node:
            yield from _nodes(item)
    elif HAVE_PGLAST and isinstance(node, pg_ast.Node):
        yield node
        slots: Iterable[str] = getattr(type(node), "__slots__", ())
        for name in slots:
            yield from _nodes(getattr(node, name, None))


_TWO_PHASE: Final = {"TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
                     "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
                     "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED"}
_LOCK_STRENGTHS: Final = {1: "KEY SHARE", 2: "SHARE", 3: "NO KEY UPDATE", 4: "UPDATE"}
_DML_NODES: Final = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
                     "MergeStmt": "MERGE"}
_HARMLESS_NODES: Final = frozenset({
    "VariableShowStmt", "FetchStmt", "ClosePortalStmt", "DeallocateStmt", "DiscardStmt",
    "ListenStmt", "UnlistenStmt", "NotifyStmt", "ExecuteStmt",
})


def _string_value(node: Any) -> str | None:
    value = getattr(node, "val", None)
    return getattr(value, "sval", None) if isinstance(node, pg_ast.A_Const) else None


def _read_write_option(options: Any) -> bool:
    """A DefElem list (BEGIN, SET TRANSACTION) that asks for READ WRITE."""
    for option in options or ():
        if getattr(option, "defname", None) == "transaction_read_only":
            value = getattr(getattr(option, "arg", None), "val", None)
            if getattr(value, "ival", 1) == 0:
                return True
    return False


def _tree_write(tree: Any) -> str | None:
    """What in a query tree may write: DML anywhere, INTO, row locks, functions."""
    for node in _nodes(tree):
        kind = type(node).__name__
        if kind in _DML_NODES:
            return _DML_NODES[kind]
        if kind == "IntoClause":
            return "SELECT INTO"
        if kind == "LockingClause":
            return "SELECT FOR " + _LOCK_STRENGTHS.get(int(node.strength), "UPDATE")
        if kind == "FuncCall":
            name = node.funcname[-1].sval
            if not _writing_function(name):
                continue
            if name.lower() == "set_config" and node.args:
                setting = _string_value(node.args[0])
                if setting is not None and setting.lower() not in PROTECTED_SETTINGS:
                    continue
            return f"{name.lower()}()"
    return None


def _pglast_statement_write(statement: Any, text: str) -> str | None:
    kind = type(statement).__name__
    if kind == "SelectStmt":
        return _tree_write(statement)
    if kind in _HARMLESS_NODES:
        return None
    if kind == "ExplainStmt":
        analyze = any(getattr(o, "defname", None) == "analyze" and getattr(
            getattr(getattr(o, "arg", None), "val", None), "boolval", True) is not False
            for o in statement.options or ())
        return _pglast_statement_write(statement.query, text) if analyze else None
    if kind in ("DeclareCursorStmt", "PrepareStmt"):
        return _pglast_statement_write(statement.query, text)
    if kind == "TransactionStmt":
        how = statement.kind.name
        if how in _TWO_PHASE:
            return _TWO_PHASE[how]
        if _read_write_option(statement.options):
            return _read_write_name("START" if how == "TRANS_STMT_START" else "BEGIN")
        return None
    if kind == "VariableSetStmt":
        name = (statement.name or "").lower()
        if name in PROTECTED_SETTINGS:
            verb = "RESET" if statement.kind.name.startswith("VAR_RESET") else "SET"
            return f"{verb} {name}"
        if _read_write_option(statement.args):
            if name == "session characteristics":
                return "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"
            return f"SET {statement.name} READ WRITE"
        return None
    if kind == "CopyStmt":
        if statement.is_from:
            return "COPY FROM"
        if statement.filename is not None or statement.is_program:
            return "COPY TO"
        return _tree_write(statement.query)
    if kind in _DML_NODES:
        return _DML_NODES[kind]
    if kind == "CreateTableAsStmt":
        if statement.is_select_into:
            return "SELECT INTO"
        if statement.objtype.name == "OBJECT_MATVIEW":
            return "CREATE MATERIALIZED VIEW"
        return "CREATE TABLE AS"
    try:
        words = _words(next(statements(text), []))
    except LexError:
        words = []
    return command_name(words)


def pglast_write_command(sql: str) -> str | None:
    """The classifier on PostgreSQL's grammar (pglast); text it cannot parse goes
    to :func:`keyword_write_command`."""
    assert HAVE_PGLAST, "pglast is not installed (pip install 'pgwire[sql]')"
    try:
        parsed = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return keyword_write_command(sql)
    for raw in parsed:
        start = raw.stmt_location or 0
        text = sql[start:start + raw.stmt_len] if raw.stmt_len else sql[start:]
        found = _pglast_statement_write(raw.stmt, text)
        if found is not None:
            return found
    return None


# -- the middleware --------------------------------------------------------------------------


class ReadOnly(Middleware[None]):
    """Refuse writes with 25006; ask the server to stay read-only too.

    ``server_side=False`` leaves the startup packet alone (layer 1 only).
    """

    client_messages = frozenset({b"Q", b"P", b"F"})

    def __init__(self, *, server_side: bool = True) -> None:
        self.server_side = server_side

    def on_startup(self, ctx: Context[None], startup: StartupMessage) -> StartupVerdict:
        if not self.server_side:
            return None
        # A plain parameter is applied after ``options``, and the last duplicate
        # wins: ours goes last, with any the client sent removed.
        parameters = tuple((k, v) for k, v in startup.parameters
                           if k.lower() != "default_transaction_read_only")
        return dataclasses.replace(
            startup, parameters=(*parameters, ("default_transaction_read_only", "on")))

    def on_client_message(self, ctx: Context[None], message: Message) -> Verdict:
        if isinstance(message, FunctionCall):
            command: str | None = "FunctionCall"
        else:
            assert isinstance(message, Query | Parse)
            command = write_command(message.query)
        if command is None:
            return None
        return Reject(READ_ONLY_SQLSTATE,
                      f"cannot execute {command} in a read-only transaction")


# -- running it ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:6432", help="host:port to accept on")
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL's host:port")
    args = parser.parse_args(argv)
    config = ProxyConfig(upstream=parse_address(args.upstream), middleware=[ReadOnly])
    return serve(config, args.listen)


def serve(config: ProxyConfig, listen: str) -> int:
    """Run a proxy for ``config`` on ``listen`` until SIGINT or SIGTERM."""

    async def proxy_main() -> None:
        proxy = await start_proxy(config, [parse_address(listen, 6432)])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(proxy.shutdown()))
        where = ", ".join(f"{a[0]}:{a[1]}" if isinstance(a, tuple) else a
                          for a in proxy.addresses)
        checker = "pglast" if HAVE_PGLAST else "keywords"
        print(f"listening on {where} (read-only, statements checked with {checker})",
              flush=True)
        await proxy.serve_until_shutdown()

    run(proxy_main)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
