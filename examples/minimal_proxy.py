"""The smallest complete pgwire proxy: log every statement with the user who sent it.

    python examples/minimal_proxy.py --listen 127.0.0.1:6432 --upstream 127.0.0.1:5432
    psql -h 127.0.0.1 -p 6432 -U postgres -c "select 1"

Clients log in through it with their own credentials (the proxy relays the
login to the server). Each simple Query and each Parse of the extended
protocol is printed as ``user: SQL`` before it goes on unchanged. Ctrl-C or
SIGTERM stops it gracefully: idle sessions end at once, busy ones when their
transaction ends. Copy this file to start your own proxy.
"""

import argparse
import asyncio
import signal

from pgwire.adapters import parse_address
from pgwire.adapters.asyncio import run, start_proxy
from pgwire.middleware import Context, Middleware, Verdict
from pgwire.protocol import Message, Parse, Query
from pgwire.proxy import ProxyConfig, format_address


class LogStatements(Middleware[None]):
    client_messages = frozenset({b"Q", b"P"})  # decode only Query and Parse

    def on_client_message(self, ctx: Context[None], message: Message) -> Verdict:
        assert isinstance(message, Query | Parse)
        print(f"{ctx.user}: {message.query}", flush=True)
        return None  # forward the statement unchanged


async def main(listen: str, upstream: str) -> None:
    config = ProxyConfig(upstream=parse_address(upstream), middleware=[LogStatements])
    proxy = await start_proxy(config, [parse_address(listen)])
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(
            signum, lambda: asyncio.ensure_future(proxy.shutdown()))
    print(f"listening on {format_address(proxy.addresses[0])}", flush=True)
    await proxy.serve_until_shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Log every statement with its user.")
    parser.add_argument("--listen", default="127.0.0.1:6432")
    parser.add_argument("--upstream", default="127.0.0.1:5432")
    args = parser.parse_args()
    run(lambda: main(args.listen, args.upstream))
