"""A proxy that tags every statement with the client's application_name.

    python examples/query_tagger.py --listen 127.0.0.1:6432 --upstream 127.0.0.1:5432

Each Query and Parse reaches the server as ``/* application_name=NAME */ SQL``,
so the name shows in ``pg_stat_activity.query``, in the server log
(``log_statement``, ``log_min_duration_statement``) and in
``pg_stat_statements`` whatever the client or a pooler in front of it did
with the setting. The name is the one in the client's startup packet (or its
``fallback_application_name``), then whatever the server reports in
ParameterStatus when the client changes it (``SET application_name``).

The name cannot end the comment early or open a nested one (PostgreSQL's
block comments nest): ``*`` is replaced, as are characters outside printable
ASCII, and the name is cut to 63 characters as the server cuts it. The comment
shifts every position in the statement, so the ``position`` of an error is
moved back before the client sees it (psql's caret stays right).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from dataclasses import dataclass
from typing import Final

from pgwire.adapters import parse_address
from pgwire.adapters.asyncio import run, start_proxy
from pgwire.middleware import (
    AuthResult,
    Context,
    Middleware,
    Reject,
    Replace,
    SessionInfo,
    StartupVerdict,
    Verdict,
)
from pgwire.protocol import ErrorResponse, Message, ParameterStatus, Parse, Query, StartupMessage
from pgwire.proxy import ProxyConfig

__all__ = ["QueryTagger", "TaggerState", "sanitize"]

#: PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name.
MAX_NAME: Final = 63


def sanitize(name: str) -> str:
    """``name`` made safe inside a ``/* ... */`` comment: printable ASCII only,
    no ``*`` (so neither ``*/`` nor ``/*`` can appear), at most 63 characters."""
    kept = (c if " " <= c <= "~" and c != "*" else "_" for c in name[:MAX_NAME])
    return "".join(kept)


@dataclass
class TaggerState:
    """One session's name, and the prefix made from it."""

    prefix: str = "/* application_name= */ "

    def rename(self, application_name: str) -> None:
        self.prefix = f"/* application_name={sanitize(application_name)} */ "


class QueryTagger(Middleware[TaggerState]):
    """Prepend ``/* application_name=... */`` to every Query and Parse."""

    client_messages = frozenset({b"Q", b"P"})
    server_messages = frozenset({b"S", b"E"})

    def create_state(self, info: SessionInfo) -> TaggerState:
        return TaggerState()

    def on_startup(self, ctx: Context[TaggerState], startup: StartupMessage) -> StartupVerdict:
        ctx.state.rename(startup.get("application_name")
                         or startup.get("fallback_application_name") or "")
        return None

    def on_authenticated(self, ctx: Context[TaggerState], result: AuthResult) -> Reject | None:
        # The server's own report at login (ParameterStatus messages of the login
        # reach no hook): what it applied, after its own cleaning.
        if result.ok and "application_name" in result.parameters:
            ctx.state.rename(result.parameters["application_name"])
        return None

    def on_client_message(self, ctx: Context[TaggerState], message: Message) -> Verdict:
        if isinstance(message, Query | Parse):
            return Replace(dataclasses.replace(message, query=ctx.state.prefix + message.query))
        return None

    def on_server_message(self, ctx: Context[TaggerState], message: Message) -> Verdict:
        if isinstance(message, ParameterStatus):
            if message.name == "application_name":
                ctx.state.rename(message.value)
        elif isinstance(message, ErrorResponse) and message.position is not None:
            # Positions count characters of the statement as the server got it.
            # With requests in flight across a rename, the prefix length of the
            # current name is a close guess; the name is rarely changed mid-pipeline.
            shift = len(ctx.state.prefix)
            position = int(message.position)
            if position > shift:
                return Replace(dataclasses.replace(message, position=str(position - shift)))
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:6432", help="host:port to accept on")
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL's host:port")
    args = parser.parse_args(argv)
    config = ProxyConfig(upstream=parse_address(args.upstream), middleware=[QueryTagger])

    async def proxy_main() -> None:
        proxy = await start_proxy(config, [parse_address(args.listen, 6432)])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(proxy.shutdown()))
        where = ", ".join(f"{a[0]}:{a[1]}" if isinstance(a, tuple) else a
                          for a in proxy.addresses)
        print(f"listening on {where} (tagging statements with application_name)", flush=True)
        await proxy.serve_until_shutdown()

    run(proxy_main)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
