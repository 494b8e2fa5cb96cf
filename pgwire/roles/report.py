"""The role report: who can become whom, what that gives them, and what a proxy makes of it.

Build it from a :class:`~pgwire.roles.RoleGraph` (loaded from a server with
:func:`~pgwire.roles.load_role_graph`, or built by hand) and, optionally, a
proxy configuration, then write it in the format you need::

    from pgwire.roles import load_role_graph
    from pgwire.roles.report import build_report, to_markdown
    from pgwire.sqlclient import SQLConnection

    with SQLConnection.connect(("127.0.0.1", 5432), user="postgres") as conn:
        graph = load_role_graph(conn)
        passwords = load_password_status(conn)
    report = build_report(graph, database="app", passwords=passwords)
    print(to_markdown(report))

The report lists every role with its attributes, every membership with its
options, what each login role reaches through membership chains (``SET
ROLE``, and inherited privileges), warnings with stable codes
(:data:`WARNING_CODES`), and, with a proxy configuration, how RoleRewrite
maps and RoleGuard guards each startup user. ``pgwire roles`` is the
command line for it; ``docs/role-report.md`` documents the output, every
warning code and the JSON schema.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from ..middleware.base import Middleware
from ..middleware.rewrite import RoleRewrite
from ..middleware.roles import RoleGuard
from ..proxy.config_file import ConfigError, ProxyFile, parse_config, read_toml
from ..sqlclient import SQLConnection
from ._graph import RoleGraph
from ._report_build import WARNING_CODES, build_report
from ._report_model import (
    SCHEMA_VERSION,
    SEVERITIES,
    AllowEntry,
    GuardSummary,
    LoginReach,
    MembershipRow,
    PoolSummary,
    ProxyReport,
    ReachEntry,
    ReportWarning,
    RewriteSummary,
    RoleReport,
    RoleRow,
    RuleRow,
    Severity,
    StartupMapping,
)
from ._report_render import (
    GraphvizError,
    GraphvizUnavailable,
    report_from_json,
    to_dot,
    to_json,
    to_markdown,
    to_mermaid,
    to_svg,
)

__all__ = [
    "SCHEMA_VERSION",
    "SEVERITIES",
    "WARNING_CODES",
    "AllowEntry",
    "GraphvizError",
    "GraphvizUnavailable",
    "GuardSummary",
    "LoginReach",
    "MembershipRow",
    "PoolSummary",
    "ProxyReport",
    "ReachEntry",
    "ReportWarning",
    "RewriteSummary",
    "RoleReport",
    "RoleRow",
    "RuleRow",
    "Severity",
    "StartupMapping",
    "build_report",
    "load_password_status",
    "load_proxy_for_report",
    "proxy_for_report",
    "report_from_json",
    "to_dot",
    "to_json",
    "to_markdown",
    "to_mermaid",
    "to_svg",
]

_CAN_READ_AUTHID_SQL: Final = (
    "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')")
# Only whether a password is set: the hash itself never leaves the server.
_PASSWORDS_SQL: Final = (
    "SELECT a.rolname, a.rolpassword IS NOT NULL FROM pg_catalog.pg_authid AS a")

#: Tables of pgwire.toml that say nothing about roles: left out when a
#: configuration is read for a report, so that their files, ports and
#: secrets need not exist where the report runs.
_IGNORED_KEYS: Final = ("listen", "workers", "client_tls", "upstream_tls", "admin",
                        "metrics", "cancel")


def load_password_status(conn: SQLConnection) -> dict[str, bool] | None:
    """Which roles have a password, or None when ``conn`` may not read ``pg_authid``.

    Only a superuser (or a role granted SELECT on it) can read ``pg_authid``;
    ``pg_roles`` shows ``********`` for every role. Reads only
    ``rolpassword IS NOT NULL``, never the stored secret.
    """
    rows = conn.query(_CAN_READ_AUTHID_SQL)
    if not rows or rows[0][0] != "t":
        return None
    return {name: flag == "t" for name, flag in conn.query(_PASSWORDS_SQL)
            if name is not None}


class NotAnalysed(Middleware[None]):
    """Stands in for a middleware the report does not analyse (not instantiated)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.report_label = f"{target} (not analysed)"


class _LenientEnviron(Mapping[str, str]):
    """``os.environ``, with a stand-in for secrets a report does not need."""

    def __getitem__(self, key: str) -> str:
        return os.environ.get(key, "unset-not-needed-for-the-report")

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def load_proxy_for_report(path: str | os.PathLike[str], graph: RoleGraph) -> ProxyFile:
    """Read a ``pgwire.toml`` for a report, without side effects.

    RoleRewrite and RoleGuard (and their subclasses) are built as the proxy
    builds them, except that every RoleGuard gets ``graph`` instead of its
    ``graph`` table (no connection is opened). Other middleware are not
    instantiated (an audit sink would open its file); they are listed as
    not analysed. Settings that do not concern roles (``listen``, TLS files,
    ``[admin]``, ``[metrics]``, ``[cancel]``) are skipped, ``*_env`` secrets
    that are not set do not matter, and a missing ``upstream`` is allowed.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is wrong.
    """
    return proxy_for_report(read_toml(path), graph, source=os.fspath(path),
                            base_dir=Path(path).resolve().parent)


def proxy_for_report(data: Mapping[str, Any], graph: RoleGraph, *, source: str,
                     base_dir: str | os.PathLike[str]) -> ProxyFile:
    """:func:`load_proxy_for_report` for already-parsed TOML ``data`` (a
    ``pgwire.toml``, or a scenario file's ``[proxy]`` table); ``source`` names
    it in errors and relative paths resolve against ``base_dir``."""
    data = dict(data)
    for key in _IGNORED_KEYS:
        data.pop(key, None)
    data.setdefault("upstream", "127.0.0.1:5432")  # not used by the report
    items = data.get("middleware", [])
    placeholders: dict[int, NotAnalysed] = {}
    if isinstance(items, list):
        kept: list[object] = []
        for index, item in enumerate(items):
            target = item.get("class") if isinstance(item, dict) else None
            found = _import(source, index, target) if isinstance(target, str) else None
            if isinstance(found, type) and issubclass(found, RoleGuard):
                assert isinstance(item, dict)
                kept.append({**item, "graph": graph})
            elif isinstance(found, type) and issubclass(found, RoleRewrite):
                kept.append(item)
            elif isinstance(target, str):
                placeholders[index] = NotAnalysed(target)
                kept.append(None)
            else:
                kept.append(item)  # parse_config reports what is wrong with it
        data["middleware"] = [item for item in kept if item is not None]
    loaded = parse_config(data, source=source, base_dir=base_dir, environ=_LenientEnviron())
    if not placeholders:
        return loaded
    chain = list(loaded.config.middleware)
    for index in sorted(placeholders):
        chain.insert(index, placeholders[index])
    return dataclasses.replace(loaded, config=dataclasses.replace(loaded.config,
                                                                  middleware=tuple(chain)))


def _import(source: str, index: int, target: str) -> object:
    module_name, colon, attribute = target.partition(":")
    if not colon:
        return None  # parse_config explains the expected form
    try:
        found: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except ImportError as exc:
        raise ConfigError(source, f"middleware[{index}].class",
                          f"cannot import {module_name}: {exc}") from None
    except AttributeError:
        raise ConfigError(source, f"middleware[{index}].class",
                          f"{module_name} has no {attribute}") from None
    return found
