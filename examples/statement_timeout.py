"""A proxy that caps statement_timeout per user, from the first statement on.

    python examples/statement_timeout.py --listen 127.0.0.1:6432 --upstream 127.0.0.1:5432 \\
        --timeout 'report_*=30s' --timeout 'app=5s'

Each rule maps a user name pattern (``fnmatch``) to a timeout; the first rule
that matches the startup user applies, and users no rule matches pass
untouched. A statement that runs longer is cancelled by PostgreSQL itself,
and the client gets PostgreSQL's own error, 57014 "canceling statement due to
statement timeout".

How the cap is set: in the startup packet
-----------------------------------------

The proxy adds ``statement_timeout`` to the StartupMessage as a plain
parameter, after removing any the client sent. The other way, a ``SET``
injected after login with its answer hidden from the client, is weaker on
every count:

- A startup setting is in force before the first statement; nothing can slip
  in between the login and an injected SET, and there is no answer to hide.
- PostgreSQL applies plain startup parameters after ``options``, so a client's
  ``options=-c statement_timeout=0`` loses to ours.
- Startup settings become the session's *default*: ``RESET statement_timeout``,
  ``RESET ALL``, ``DISCARD ALL`` and ``SET statement_timeout TO DEFAULT``
  return to the cap, by PostgreSQL's own rules. A SET'd value would be reset
  to the server's default instead, lifting the cap.

How the cap is kept: refusing the SETs that would lift it
---------------------------------------------------------

statement_timeout is a user setting: any role may change it and PostgreSQL has
no way to forbid that, so the proxy reads the statements. ``SET [SESSION |
LOCAL] statement_timeout`` to a value within the cap (a shorter timeout) is
let through; to 0, to a longer value, or to anything it cannot read, it is
refused with 42501, and so is ``set_config(...)`` unless its first argument is
a string literal naming another setting, and a FunctionCall message of
set_config. ``SHOW``, ``RESET`` and ``current_setting('statement_timeout')``
pass. The check works on the SQL text (no
grammar), so it errs toward refusing: a statement that merely quotes the
word ``statement_timeout`` somewhere else, or a ``U&"..."`` identifier after
SET, is refused too.

What it cannot see: a function or DO block that changes the setting from
inside with the name built at run time (``set_config('statement' ||
'_timeout', ...)``, ``EXECUTE format('SET %I = 0', ...)``). If your users can create
functions (or call one that does this), the cap is a guard rail, not a wall;
keep CREATE on schemas and untrusted languages away from capped roles. A
statement already running keeps the timeout it started with, so a function
cannot lift the cap of the statement that calls it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fnmatch
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pgwire.adapters import parse_address
from pgwire.adapters.asyncio import run, start_proxy
from pgwire.middleware import (
    Context,
    Middleware,
    Reject,
    SessionInfo,
    StartupVerdict,
    Verdict,
)
from pgwire.protocol import FunctionCall, Message, Parse, Query, StartupMessage
from pgwire.proxy import ProxyConfig, format_address

__all__ = ["StatementTimeout", "lifting_statement", "milliseconds"]

SETTING: Final = "statement_timeout"
REFUSED: Final = "42501"
#: pg_proc OID of set_config(text, text, boolean), fixed since PostgreSQL 7.3.
SET_CONFIG_OID: Final = 2078
_UNITS: Final = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000,
                 "d": 86_400_000}


def milliseconds(value: str) -> float | None:
    """A statement_timeout value in milliseconds (``'5s'``, ``500``, ``1min``), as
    PostgreSQL reads it; None when it cannot be read here."""
    match = re.fullmatch(r"\s*'?\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*'?\s*", value, re.I)
    if match is None or match.group(2).lower() not in (*_UNITS, ""):
        return None
    return float(match.group(1)) * _UNITS.get(match.group(2).lower(), 1)


# SET [SESSION | LOCAL] statement_timeout {TO | =} value
_SET: Final = re.compile(r"\bset\s+(?:session\s+|local\s+)?\"?statement_timeout\"?\s*(?:to|=)\s*"
                         r"('[^']*'|[0-9a-z.]+)", re.I)
_ALLOWED: Final = re.compile(r"\b(?:show|reset)\s+\"?statement_timeout\"?"
                             r"|\bcurrent_setting\s*\(\s*'statement_timeout'", re.I)
# set_config( and its first argument when that is a plain string literal.
_SET_CONFIG: Final = re.compile(r"\bset_config\s*\(\s*(?:('(?:[^']|'')*')\s*,)?", re.I)


def lifting_statement(sql: str, cap_ms: float) -> str | None:
    """Why ``sql`` may lift a ``cap_ms`` cap (the text to refuse it with), or None."""
    for call in _SET_CONFIG.finditer(sql):
        name = (call.group(1) or "").strip("'").strip().lower()
        if not name or name == SETTING:
            return "set_config() of statement_timeout"
    if re.search(r"\bset\s+(?:session\s+|local\s+)?u&", sql, re.I):
        return "SET of a U& identifier"
    text = _ALLOWED.sub(" ", sql)
    for match in _SET.finditer(text):
        value = match.group(1)
        if value.lower() == "default":
            continue    # back to the session default: the cap
        wanted = milliseconds(value)
        if wanted is None or wanted == 0 or wanted > cap_ms:
            return f"SET statement_timeout to {value}"
    if SETTING in _SET.sub(" ", text).lower():
        return "statement_timeout"   # mentioned in some other way: err toward refusing
    return None


@dataclass
class Cap:
    """The cap of one session: the setting's text and its value in milliseconds."""

    value: str = ""
    ms: float = 0.0


class StatementTimeout(Middleware[Cap]):
    """Put a per-user statement_timeout in the startup packet and keep it there."""

    client_messages = frozenset({b"Q", b"P", b"F"})

    def __init__(self, timeouts: Mapping[str, str]) -> None:
        self.timeouts = dict(timeouts)
        for pattern, value in self.timeouts.items():
            if not milliseconds(value):
                raise ValueError(f"timeout for {pattern!r} must be a positive duration such "
                                 f"as 5s or 500ms, not {value!r}")

    def create_state(self, info: SessionInfo) -> Cap:
        return Cap()

    def on_startup(self, ctx: Context[Cap], startup: StartupMessage) -> StartupVerdict:
        user = startup.get("user") or ""
        value = next((v for p, v in self.timeouts.items() if fnmatch.fnmatchcase(user, p)), None)
        if value is None:
            return None
        ctx.state.value, ctx.state.ms = value, milliseconds(value) or 0.0
        # Plain parameters are applied after ``options`` and the last duplicate wins:
        # drop the client's own, put ours last.
        parameters = tuple((k, v) for k, v in startup.parameters if k.lower() != SETTING)
        return dataclasses.replace(startup, parameters=(*parameters, (SETTING, value)))

    def on_client_message(self, ctx: Context[Cap], message: Message) -> Verdict:
        if not ctx.state.ms:
            return None     # no cap for this user
        if isinstance(message, FunctionCall):
            if message.function_oid == SET_CONFIG_OID:
                return self.refuse(ctx, "set_config() of statement_timeout")
            return None
        assert isinstance(message, Query | Parse)
        why = lifting_statement(message.query, ctx.state.ms)
        return None if why is None else self.refuse(ctx, why)

    def refuse(self, ctx: Context[Cap], why: str) -> Reject:
        return Reject(REFUSED, f"permission denied to change statement_timeout ({why})",
                      detail=f"This proxy caps statement_timeout at {ctx.state.value} for "
                      f"user {ctx.user}.",
                      hint=f"SET statement_timeout to at most {ctx.state.value} is allowed.")


def parse_rule(text: str) -> tuple[str, str]:
    """``PATTERN=TIMEOUT`` from the command line."""
    pattern, equals, value = text.rpartition("=")
    if not equals or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=TIMEOUT, got {text!r}")
    return pattern, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:6432", help="host:port to accept on")
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL's host:port")
    parser.add_argument("--timeout", action="append", type=parse_rule, default=[],
                        metavar="PATTERN=TIMEOUT", help="e.g. 'report_*=30s' (repeatable; the "
                        "first match wins)")
    args = parser.parse_args(argv)
    try:
        capping = StatementTimeout(dict(args.timeout))
    except ValueError as exc:
        parser.error(str(exc))
    config = ProxyConfig(upstream=parse_address(args.upstream), middleware=[capping])

    async def proxy_main() -> None:
        proxy = await start_proxy(config, [parse_address(args.listen, 6432)])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(proxy.shutdown()))
        rules = ", ".join(f"{p}={v}" for p, v in capping.timeouts.items()) or "no rules"
        print(f"listening on {format_address(proxy.addresses[0])} (statement_timeout: "
              f"{rules})", flush=True)
        await proxy.serve_until_shutdown()

    run(proxy_main)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
