"""How the proxy pools server connections (plain, validated settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from ._pool_state import SESSION_STATE_KINDS

__all__ = ["DEFAULT_SESSION_STATE", "SESSION_STATE_KINDS", "PoolConfig", "PoolMode",
           "StatePolicy"]

PoolMode = Literal["session", "transaction"]
#: What transaction mode does with session state a client creates:
#:
#: - ``pin``: the client keeps its server connection until it runs DISCARD ALL
#:   or leaves (as AWS RDS Proxy pins);
#: - ``refuse``: the statement is refused with 0A000 before it reaches the server;
#: - ``reset``: the statement runs; the state is undone when the connection goes
#:   back to the pool at the end of the transaction (so it does not outlive it).
StatePolicy = Literal["pin", "refuse", "reset"]

#: Defaults: keep everything a client builds, except sequence state (currval),
#: which is not worth a server connection.
DEFAULT_SESSION_STATE: Final[Mapping[str, StatePolicy]] = MappingProxyType({
    "settings": "pin", "role": "pin", "prepare": "pin", "listen": "pin", "temp": "pin",
    "cursor": "pin", "advisory": "pin", "sequence": "reset", "unknown": "pin",
})
_POLICIES: Final = ("pin", "refuse", "reset")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """Server connection pooling (``ProxyConfig(pool=PoolConfig(...))``).

    Server connections are kept per key: the upstream login role, the
    database and every other startup parameter the client sent (so a pooled
    connection always reports what its client asked for at login).

    - ``mode``: ``"session"`` (a client keeps one server connection until it
      leaves) or ``"transaction"`` (the connection goes back to the pool at
      every ReadyForQuery 'I').
    - ``max_size`` server connections per key at most; ``min_idle`` kept open
      per key once the key has been used.
    - ``checkout_timeout``: how long a client waits for a connection before
      FATAL 53300.
    - ``health_check_after``: an idle connection unused this long is verified
      before it is handed out.
    - ``server_idle_timeout`` / ``server_lifetime``: close idle connections
      beyond ``min_idle`` after this long idle; close any connection this old
      when it comes back.
    - ``reset``: ``"minimal"`` undoes only what the client changed (tracked from
      its statements and the server's answers) and falls back to DISCARD ALL
      when it cannot tell; ``"discard_all"`` always sends DISCARD ALL.
    - ``session_state``: a :data:`StatePolicy` for each kind in
      :data:`SESSION_STATE_KINDS` (transaction mode; missing kinds use
      :data:`DEFAULT_SESSION_STATE`).
    - ``maintenance_interval``: how often idle connections are checked for
      the timeouts above.

    Every connection is verified before it goes to a client other than the
    one that used it last: ``current_user`` and ``session_user`` must equal
    what the connection had right after its login (the login role, or the
    role the login set, e.g. with ``ALTER ROLE ... SET role``), and no
    transaction may be open. A connection that fails is closed and counted.
    """

    mode: PoolMode = "transaction"
    max_size: int = 20
    min_idle: int = 0
    checkout_timeout: float = 30.0
    health_check_after: float = 30.0
    server_idle_timeout: float | None = 600.0
    server_lifetime: float | None = 3600.0
    reset: Literal["minimal", "discard_all"] = "minimal"
    session_state: Mapping[str, StatePolicy] = field(
        default_factory=lambda: dict(DEFAULT_SESSION_STATE))
    maintenance_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("session", "transaction"):
            raise ValueError(f"pool mode must be 'session' or 'transaction', not {self.mode!r}")
        if self.max_size < 1:
            raise ValueError(f"pool max_size must be at least 1, not {self.max_size!r}")
        if not 0 <= self.min_idle <= self.max_size:
            raise ValueError(f"pool min_idle must be 0..max_size, not {self.min_idle!r}")
        for name in ("checkout_timeout", "health_check_after", "server_idle_timeout",
                     "server_lifetime", "maintenance_interval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"pool {name} must be a positive number of seconds, "
                                 f"not {value!r}")
        if self.reset not in ("minimal", "discard_all"):
            raise ValueError(f"pool reset must be 'minimal' or 'discard_all', "
                             f"not {self.reset!r}")
        for kind, policy in self.session_state.items():
            if kind not in SESSION_STATE_KINDS:
                raise ValueError(f"unknown session state kind {kind!r}; known: "
                                 f"{', '.join(SESSION_STATE_KINDS)}")
            if policy not in _POLICIES:
                raise ValueError(f"session state policy for {kind!r} must be one of "
                                 f"{', '.join(_POLICIES)}, not {policy!r}")

    def policy(self, kind: str) -> StatePolicy:
        """The policy for session state ``kind`` in transaction mode."""
        return self.session_state.get(kind) or DEFAULT_SESSION_STATE[kind]
