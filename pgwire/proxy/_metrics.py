"""What a running proxy looks like now: a snapshot as plain data, and two views of it.

:func:`snapshot` copies the proxy's counters, the pool's rows, every pooled
server connection and every session into dicts, lists, strings and numbers,
so another thread (an admin console, an HTTP handler) can read and format it
while the engine runs on. It reads the engine's state, so it must run where
the engine runs: each adapter's ``snapshot()`` method (``AsyncioProxy``,
``TrioProxy``, ``BlockingProxy``) gets there from any thread.

The views are pure functions of a snapshot:

- :func:`prometheus_text`: the Prometheus text exposition format 0.0.4;
- :func:`admin_rows`: the columns and rows of the admin console's
  ``SHOW POOLS``, ``SHOW SERVERS``, ``SHOW CLIENTS``, ``SHOW STATS`` and
  ``SHOW HELP`` (see :mod:`pgwire.adapters.admin`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._actions import format_address
from ._pool import ServerState
from ._session import SessionState

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["ADMIN_COMMANDS", "admin_command", "admin_rows", "prometheus_text", "snapshot"]

#: The admin console's commands and what each shows.
ADMIN_COMMANDS: Final[Mapping[str, str]] = {
    "SHOW POOLS": "one row per pool key: clients, waiting clients, server connections "
                  "by state",
    "SHOW SERVERS": "one row per pooled server connection: state, backend pid, age, "
                    "idle time, last session, session state left on it",
    "SHOW CLIENTS": "one row per client session: state, address, user, database, "
                    "transaction status, the server connection it holds, pins",
    "SHOW STATS": "the proxy's counters, and each pool key's counters",
    "SHOW HELP": "this list",
}

# Pool row keys that are labels or gauges; every other numeric key is a counter.
_POOL_LABELS: Final = ("user", "database", "mode")
_POOL_SERVER_STATES: Final = ("active", "idle", "checking", "connecting")
_POOL_GAUGES: Final = ("clients", "clients_waiting",
                       *(f"servers_{state}" for state in _POOL_SERVER_STATES))
_SESSION_STATES: Final = (SessionState.STARTUP, SessionState.AUTH_LOOKUP,
                          SessionState.CLIENT_AUTH, SessionState.CONNECTING,
                          SessionState.UPSTREAM_LOGIN, SessionState.READY,
                          SessionState.CANCEL, SessionState.CLOSED)

_HELP: Final[Mapping[str, str]] = {
    # Proxy counters (ProxyStats).
    "sessions_started": "Client connections accepted.",
    "logins": "Client logins that succeeded.",
    "login_failures": "Client logins that failed.",
    "login_timeouts": "Client logins that ran out of time.",
    "upstream_read_timeouts": "Sessions ended because the server sent nothing for "
                              "upstream_read_timeout while it owed an answer.",
    "refused_max_clients": "Clients refused because max_clients was reached.",
    "cancel_requests": "CancelRequests received.",
    "upstream_connect_failures": "Connections to the upstream server that failed.",
    "upstream_errors": "Upstream connections that broke.",
    "auth_query_failures": "Auth queries that failed.",
    "client_protocol_errors": "Clients that broke the protocol.",
    "internal_errors": "Sessions ended by an internal error.",
    "rejected": "Messages rejected by middleware.",
    "jobs_refused": "Middleware jobs refused because too many were pending.",
    # Pool counters (PoolKeyStats).
    "checkouts": "Server connections handed to clients.",
    "waits": "Checkouts that had to wait for a server connection.",
    "wait_seconds": "Seconds clients spent waiting for a server connection.",
    "checkout_timeouts": "Clients that gave up waiting (FATAL 53300).",
    "servers_opened": "Server connections opened.",
    "servers_closed": "Server connections closed.",
    "resets": "Minimal resets run on a server connection between clients.",
    "discard_alls": "DISCARD ALL resets run on a server connection between clients.",
    "verifications": "Checks of current_user, session_user and the transaction status.",
    "failed_verifications": "Verifications that failed (the connection was closed).",
    "failed_resets": "Resets that failed (the connection was closed).",
    "pinned_transactions": "Transactions that ended with the client keeping its server "
                           "connection (pinned by session state).",
    "refused_statements": "Statements refused by a 'refuse' session state policy.",
    "reprepared": "Prepared statements prepared again on another server connection.",
    "pool_login_failures": "Server logins of the pool that failed.",
}


# -- the snapshot -----------------------------------------------------------------------


def snapshot(proxy: Proxy) -> dict[str, Any]:
    """The proxy's state now, as plain data (copies, safe to keep and read anywhere).

    Keys: ``taken_at`` (Unix time), ``proxy`` (the counters of
    :class:`~pgwire.proxy.ProxyStats`), ``shutting_down``, ``pool`` (None, or
    the pool's mode and max_size), ``pools`` (the rows of
    :meth:`Pool.stats <pgwire.proxy.Pool.stats>`), ``servers`` and
    ``sessions`` (one dict per pooled server connection and per session).

    Call it on the engine's thread (the adapters' ``snapshot()`` methods do).
    """
    pool = proxy.pool
    now = pool._clock() if pool is not None else time.monotonic()
    servers: list[dict[str, Any]] = []
    if pool is not None:
        for server in sorted(pool.servers(), key=lambda s: s.id):
            backend_key = server.conn.frontend.backend_key
            servers.append({
                "id": server.id,
                "user": server.key.user,
                "database": server.key.database,
                "state": server.state,
                "backend_pid": backend_key[0] if backend_key is not None else None,
                "age_seconds": round(max(0.0, now - server.created), 3),
                "idle_seconds": round(max(0.0, now - server.idle_since), 3)
                if server.state == ServerState.IDLE else None,
                "session": server.session.session_id if server.session is not None
                else None,
                "last_session": server.last_session,
                "dirty": sorted(server.dirty),
                "prepared": len(server.prepared),
            })
    sessions: list[dict[str, Any]] = []
    for session in sorted(proxy.sessions, key=lambda s: s.session_id):
        address = session.info.client_address
        held = session._server
        sessions.append({
            "session_id": session.session_id,
            "state": session.state,
            "client_address": format_address(address) if address is not None else None,
            "user": session.roles.client_user or None,
            "database": session.roles.database or None,
            "upstream_user": session._upstream_user,
            "transaction_status": session.transaction_status,
            "server": held.id if held is not None else None,
            "pinned": sorted(session._pool_pins),
        })
    return {
        "taken_at": time.time(),
        "proxy": proxy.stats.as_dict(),
        "shutting_down": proxy.shutting_down,
        "pool": None if pool is None else {"mode": pool.config.mode,
                                           "max_size": pool.config.max_size},
        "pools": [dict(row) for row in pool.stats()] if pool is not None else [],
        "servers": servers,
        "sessions": sessions,
    }


# -- Prometheus -------------------------------------------------------------------------

_NAME_OK: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def _metric_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    if not _NAME_OK.match(cleaned):
        cleaned = "_" + cleaned
    return cleaned


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, object]]) -> str:
    inside = ",".join(f'{name}="{_escape_label(str(value))}"' for name, value in pairs)
    return "{" + inside + "}" if inside else ""


class _Exposition:
    """Metric families in the order they were first written; samples under each."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> list[str]:
        found = self._families.get(name)
        if found is None:
            found = self._families[name] = (kind, help_text, [])
        return found[2]

    def sample(self, name: str, kind: str, help_text: str, value: float,
               labels: Sequence[tuple[str, object]] = ()) -> None:
        self.family(name, kind, help_text).append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def prometheus_text(snap: Mapping[str, Any]) -> str:
    """``snap`` (from :func:`snapshot`) in the Prometheus text format 0.0.4.

    Names start with ``pgwire_``. Counters end in ``_total``; current counts
    are gauges. Pool metrics carry ``user``, ``database`` and ``mode`` labels
    (escaped as the format requires: backslash, double quote, newline), and
    are present only when the proxy pools. Serve it as
    ``text/plain; version=0.0.4; charset=utf-8``.
    """
    out = _Exposition()
    for name, value in snap.get("proxy", {}).items():
        metric = _metric_name(f"pgwire_{name}_total")
        out.sample(metric, "counter", _HELP.get(name, f"Proxy counter {name}."), value)
    out.sample("pgwire_shutting_down", "gauge",
               "1 while the proxy is shutting down (refusing new logins).",
               1 if snap.get("shutting_down") else 0)
    sessions = snap.get("sessions", [])
    states = sorted({s["state"] for s in sessions} | set(_SESSION_STATES))
    for state in states:
        count = sum(1 for s in sessions if s["state"] == state)
        out.sample("pgwire_sessions", "gauge", "Client sessions now, by state.", count,
                   [("state", state)])
    pool = snap.get("pool")
    if pool is not None:
        out.sample("pgwire_pool_max_size", "gauge",
                   "Server connections allowed per pool key.", pool["max_size"])
        out.family("pgwire_pool_clients", "gauge", "Clients logged in, per pool key.")
        out.family("pgwire_pool_clients_waiting", "gauge",
                   "Clients waiting for a server connection, per pool key.")
        out.family("pgwire_pool_servers", "gauge",
                   "Server connections now, per pool key and state.")
        for row in snap.get("pools", []):
            labels = [(name, row[name]) for name in _POOL_LABELS]
            out.sample("pgwire_pool_clients", "gauge", "", row["clients"], labels)
            out.sample("pgwire_pool_clients_waiting", "gauge", "", row["clients_waiting"],
                       labels)
            for state in _POOL_SERVER_STATES:
                out.sample("pgwire_pool_servers", "gauge", "", row[f"servers_{state}"],
                           [*labels, ("state", state)])
            for name, value in row.items():
                if name in _POOL_LABELS or name in _POOL_GAUGES or not (
                    isinstance(value, int | float) and not isinstance(value, bool)
                ):
                    continue
                help_name = "pool_login_failures" if name == "login_failures" else name
                out.sample(_metric_name(f"pgwire_pool_{name}_total"), "counter",
                           _HELP.get(help_name, f"Pool counter {name}."), value, labels)
    return out.text()


# -- the admin console --------------------------------------------------------------------

Row = tuple[object, ...]


def _pools(snap: Mapping[str, Any]) -> tuple[list[str], list[Row]]:
    columns = [*_POOL_LABELS, *_POOL_GAUGES]
    return columns, [tuple(row[c] for c in columns) for row in snap.get("pools", [])]


def _servers(snap: Mapping[str, Any]) -> tuple[list[str], list[Row]]:
    columns = ["id", "user", "database", "state", "backend_pid", "age_seconds",
               "idle_seconds", "session", "last_session", "dirty", "prepared"]
    rows: list[Row] = []
    for server in snap.get("servers", []):
        row = dict(server, dirty=",".join(server["dirty"]))
        rows.append(tuple(row[c] for c in columns))
    return columns, rows


def _clients(snap: Mapping[str, Any]) -> tuple[list[str], list[Row]]:
    columns = ["session_id", "state", "client_address", "user", "database",
               "upstream_user", "transaction_status", "server", "pinned"]
    rows: list[Row] = []
    for session in snap.get("sessions", []):
        row = dict(session, pinned=",".join(session["pinned"]))
        rows.append(tuple(row[c] for c in columns))
    return columns, rows


def _stats(snap: Mapping[str, Any]) -> tuple[list[str], list[Row]]:
    rows: list[Row] = [(None, None, name, value)
                       for name, value in snap.get("proxy", {}).items()]
    for pool_row in snap.get("pools", []):
        for name, value in pool_row.items():
            if name not in _POOL_LABELS and name not in _POOL_GAUGES:
                rows.append((pool_row["user"], pool_row["database"], name, value))
    return ["user", "database", "counter", "value"], rows


def _help(snap: Mapping[str, Any]) -> tuple[list[str], list[Row]]:
    return ["command", "description"], list(ADMIN_COMMANDS.items())


_VIEWS: Final[Mapping[str, Callable[[Mapping[str, Any]], tuple[list[str], list[Row]]]]] = {
    "SHOW POOLS": _pools,
    "SHOW SERVERS": _servers,
    "SHOW CLIENTS": _clients,
    "SHOW STATS": _stats,
    "SHOW HELP": _help,
}


def admin_command(text: str) -> str:
    """``text`` as one of the :data:`ADMIN_COMMANDS` (any case, any whitespace
    between the words and around them, an optional trailing semicolon).

    Raises:
        ValueError: an unknown command; the message lists the known ones.
    """
    normalized = " ".join(text.strip().removesuffix(";").split()).upper()
    if normalized not in ADMIN_COMMANDS:
        shown = " ".join(text.split())
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ValueError(f"unknown admin command {shown!r}; the admin console answers "
                         f"{', '.join(ADMIN_COMMANDS)}")
    return normalized


def admin_rows(snap: Mapping[str, Any], command: str) -> tuple[list[str], list[Row]]:
    """The column names and rows that answer admin ``command`` from ``snap``.

    ``command`` is read by :func:`admin_command`. Values are ``str``, ``int``,
    ``float`` or ``None``.

    Raises:
        ValueError: an unknown command; the message lists the known ones.
    """
    return _VIEWS[admin_command(command)](snap)
