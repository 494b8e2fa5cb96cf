"""The ``pgwire`` command line (also ``python -m pgwire``).

- ``pgwire proxy``: run the proxy (:mod:`pgwire.adapters.serve`), configured
  by flags, a TOML file (:mod:`pgwire.proxy.config_file`), or both — flags
  win. See ``docs/proxy.md``.
- ``pgwire demo``: the proxy in front of a throwaway PostgreSQL, with a
  scripted session through it (:mod:`pgwire.demo_proxy`).
- ``pgwire demo --fake-server``: the in-memory server and a scripted
  conversation showing every message (:mod:`pgwire.demo_fake`).
- ``pgwire audit verify FILE``: check the hash chain of an audit file
  (:func:`pgwire.audit.verify_chain`). See ``docs/audit.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

from .proxy.config_file import ADAPTER_NAMES, LOG_LEVELS, POOL_MODES, ConfigError, Override

__all__ = ["main", "proxy_overrides"]

_PROXY_HELP = """\
Run the proxy until SIGINT or SIGTERM (then shut down gracefully; a second
signal ends every session at once). With no --config, --upstream is enough:
passthrough authentication, no middleware, listening on 127.0.0.1:6432.
Flags override the file. See docs/proxy.md for every setting."""

_DEMO_HELP = """\
Start a throwaway PostgreSQL, put the proxy in front of it with two small
middleware (a query log and a read-only rule), play a short session through
it (a query, a prepared statement, a refused write, a cancel), then print a
psql command to try it and wait for Ctrl-C. Needs the PostgreSQL server
programs; --fake-server runs the in-memory server demo instead."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwire", description="Tools built on the pgwire PostgreSQL protocol library.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    proxy = commands.add_parser("proxy", help="run the PostgreSQL proxy",
                                description=_PROXY_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    proxy.add_argument("--config", "-c", metavar="FILE", help="a pgwire.toml file")
    proxy.add_argument("--listen", metavar="HOST:PORT", action="append",
                       help="where to accept clients (repeat for several; default "
                            "127.0.0.1:6432; port 0 picks a free one)")
    proxy.add_argument("--upstream", metavar="HOST:PORT", help="the PostgreSQL server")
    proxy.add_argument("--adapter", choices=ADAPTER_NAMES,
                       help="the I/O library (default asyncio)")
    proxy.add_argument("--workers", metavar="N", type=int,
                       help="worker processes sharing the port (asyncio only; default 1)")
    proxy.add_argument("--tls-cert", metavar="FILE",
                       help="certificate (PEM) to offer clients TLS with")
    proxy.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    proxy.add_argument("--auth", choices=("passthrough", "proxy"),
                       help="passthrough: relay the client's login to the server; proxy: "
                            "check clients against [auth] in the file")
    proxy.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    proxy.add_argument("--pool-mode", choices=POOL_MODES,
                       help="pool server connections (needs proxy auth): a client keeps one "
                            "for its session, or only for each transaction")
    proxy.add_argument("--pool-size", metavar="N", type=int,
                       help="server connections per pool key at most (default 20; turns "
                            "the pool on)")
    proxy.add_argument("--admin", metavar="HOST:PORT",
                       help="serve the admin console (SHOW POOLS ...) there; users come "
                            "from [admin.users] in the file")
    proxy.add_argument("--metrics", metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics")

    demo = commands.add_parser("demo", help="see the proxy work in front of a throwaway "
                                            "PostgreSQL", description=_DEMO_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--no-wait", action="store_true",
                      help="exit after the scripted session instead of waiting for Ctrl-C")
    demo.add_argument("--fake-server", action="store_true",
                      help="the in-memory server demo instead (no PostgreSQL needed)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="--fake-server: address to listen on (127.0.0.1)")
    demo.add_argument("--port", type=int, default=0,
                      help="--fake-server: port to listen on (0: a free one)")
    demo.add_argument("--keep-running", action="store_true",
                      help="--fake-server: after the demo, serve until Ctrl-C")

    audit = commands.add_parser("audit", help="work with audit files",
                                description="Tools for the audit middleware's files "
                                            "(docs/audit.md).")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND",
                                          required=True)
    verify = audit_commands.add_parser(
        "verify", help="check the hash chain of a JSON Lines audit file",
        description=_AUDIT_VERIFY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("file", metavar="FILE", help="the audit file (JSON Lines)")
    verify.add_argument("--key-env", metavar="VAR",
                        help="environment variable holding the HMAC key the file was "
                             "written with")
    verify.add_argument("--anchor", metavar="SEQ:HASH",
                        help="a seq and hash recorded elsewhere (the sink logs them when it "
                             "closes) that the file must still contain: detects records cut "
                             "off the end")

    from .roles._report_cli import configure_parser as configure_roles  # noqa: PLC0415
    configure_roles(commands)

    from .scenarios.cli import configure_parser as configure_check  # noqa: PLC0415
    configure_check(commands)
    return parser


_AUDIT_VERIFY_HELP = """\
Check every line of an audit file written by the JSON Lines sink: exit 0 and
print the record count and the last hash when the chain is intact; exit 1 and
print the first bad line and why otherwise (an edited, deleted, inserted or
moved record, or a damaged line); exit 2 when the file cannot be read. Lines
cut off the end are detected only with --anchor."""


def _run_audit_verify(args: argparse.Namespace) -> int:
    from .audit import verify_chain  # noqa: PLC0415 - only this command needs it

    key: str | None = None
    if args.key_env is not None:
        key = os.environ.get(args.key_env)
        if key is None:
            sys.stderr.write(f"pgwire audit verify: the environment variable {args.key_env} "
                             "is not set\n")
            return 2
    anchor: tuple[int, str] | None = None
    if args.anchor is not None:
        seq, _, digest = args.anchor.partition(":")
        if not seq.isdigit() or not digest:
            sys.stderr.write("pgwire audit verify: --anchor takes SEQ:HASH, such as "
                             "1234:9f86d0...\n")
            return 2
        anchor = (int(seq), digest)
    try:
        result = verify_chain(args.file, key, anchor=anchor)
    except OSError as exc:
        sys.stderr.write(f"pgwire audit verify: cannot read {args.file}: {exc.strerror}\n")
        return 2
    if result.ok:
        print(f"{args.file}: OK, {result.records} records, last seq {result.last_seq or 0}, "
              f"last hash {result.last_hash or '-'}")
        return 0
    print(f"{args.file}: line {result.bad_line}: {result.reason}")
    print(f"{args.file}: the {result.records} records before it are intact"
          + (f" (last seq {result.last_seq}, hash {result.last_hash})" if result.records
             else ""))
    return 1


def proxy_overrides(args: argparse.Namespace) -> tuple[Override, ...]:
    """The configuration keys the ``pgwire proxy`` flags set (paths made absolute)."""
    found: list[Override] = []
    if args.listen:
        found.append(Override("listen", list(args.listen), "--listen"))
    if args.upstream is not None:
        found.append(Override("upstream", args.upstream, "--upstream"))
    if args.adapter is not None:
        found.append(Override("adapter", args.adapter, "--adapter"))
    if args.workers is not None:
        found.append(Override("workers", args.workers, "--workers"))
    if args.tls_cert is not None:
        found.append(Override("client_tls.cert", os.path.abspath(args.tls_cert), "--tls-cert"))
    if args.tls_key is not None:
        found.append(Override("client_tls.key", os.path.abspath(args.tls_key), "--tls-key"))
    if args.auth == "passthrough":
        # The whole [auth] table goes: its proxy-mode keys mean nothing now.
        found.append(Override("auth", {"mode": "passthrough"}, "--auth"))
    elif args.auth == "proxy":
        found.append(Override("auth.mode", "proxy", "--auth"))
    if args.log_level is not None:
        found.append(Override("log_level", args.log_level, "--log-level"))
    if args.pool_mode is not None:
        found.append(Override("pool.mode", args.pool_mode, "--pool-mode"))
    if args.pool_size is not None:
        found.append(Override("pool.max_size", args.pool_size, "--pool-size"))
    if args.admin is not None:
        found.append(Override("admin.listen", args.admin, "--admin"))
    if args.metrics is not None:
        found.append(Override("metrics.listen", args.metrics, "--metrics"))
    return tuple(found)


def _run_proxy(args: argparse.Namespace) -> int:
    from .adapters.serve import ConfigSource, serve  # noqa: PLC0415 - loads asyncio

    source = ConfigSource(args.config, proxy_overrides(args))
    try:
        return serve(source)
    except ConfigError as exc:
        sys.stderr.write(f"pgwire proxy: {exc}\n")
        return 2


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.fake_server:
        from .demo_fake import run_fake_demo  # noqa: PLC0415

        return run_fake_demo(args.host, args.port, keep_running=args.keep_running)
    if args.keep_running or args.port or args.host != "127.0.0.1":
        parser.error("--host, --port and --keep-running go with --fake-server")
    from .demo_proxy import run_demo  # noqa: PLC0415

    return run_demo(wait=not args.no_wait)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgwire`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Rows hold non-ASCII text; never crash on a terminal that cannot show it.
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.command == "proxy":
        return _run_proxy(args)
    if args.command == "audit":
        return _run_audit_verify(args)
    if args.command == "roles":
        from .roles._report_cli import run as run_roles  # noqa: PLC0415
        return run_roles(args)
    if args.command == "check":
        from .scenarios.cli import run as run_check  # noqa: PLC0415
        return run_check(args)
    try:
        return _run_demo(args, parser)
    except KeyboardInterrupt:
        return 130
