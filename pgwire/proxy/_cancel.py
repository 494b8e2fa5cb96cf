"""Cancel keys: the proxy's own BackendKeyData, and routing CancelRequests home.

A client never sees the upstream server's key. Each session gets a key the
proxy makes up; a CancelRequest carrying it is mapped to the upstream key of
the server connection the session is using at that moment, and sent there.

The process id of every key carries the issuing proxy instance's id in bits
24-30, so a CancelRequest that lands on another proxy process (several
workers behind ``SO_REUSEPORT``) or another host (a load balancer in front of
several proxies) can be forwarded to the instance that owns the session.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..protocol import PROTOCOL_3_2, CancelRequest
from ._actions import Address

__all__ = ["MAX_INSTANCE_ID", "CancelKeys", "CancelRoute", "UpstreamKey", "instance_of"]

#: Instance ids fit in 7 bits, so process ids stay positive 32-bit integers.
MAX_INSTANCE_ID: Final = 127
_COUNTER_BITS: Final = 24
_COUNTER_MASK: Final = (1 << _COUNTER_BITS) - 1
_KEY_LENGTH_3_0: Final = 4
#: Protocol 3.2 allows up to 256 bytes; 32 random bytes are beyond guessing.
_KEY_LENGTH_3_2: Final = 32
_DUMMY_SECRET: Final = bytes(_KEY_LENGTH_3_2)


def instance_of(process_id: int) -> int:
    """The id of the proxy instance that issued ``process_id``."""
    return (process_id >> _COUNTER_BITS) & MAX_INSTANCE_ID


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """Where a session's queries run now: the server's address and its key."""

    address: Address
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class CancelRoute:
    """Send ``request`` to ``address`` on a new connection, then close it."""

    address: Address
    request: CancelRequest
    forwarded: bool


class CancelKeys:
    """The keys this proxy instance handed out, and where each one cancels.

    One object serves every session of a process (it is plain data, no
    locks: each adapter drives sessions from one thread at a time).
    ``peers`` maps other instances' ids to the address where they accept
    CancelRequests.
    """

    __slots__ = ("_counter", "_keys", "instance_id", "peers")

    def __init__(self, instance_id: int = 0, peers: Mapping[int, Address] | None = None) -> None:
        if not 0 <= instance_id <= MAX_INSTANCE_ID:
            raise ValueError(f"instance_id must be 0..{MAX_INSTANCE_ID}, not {instance_id}")
        peers = dict(peers or {})
        for peer in peers:
            if not 0 <= peer <= MAX_INSTANCE_ID:
                raise ValueError(f"peer instance ids must be 0..{MAX_INSTANCE_ID}, not {peer}")
        if instance_id in peers:
            raise ValueError(f"instance {instance_id} is this proxy; it cannot be a peer too")
        self.instance_id = instance_id
        self.peers: dict[int, Address] = peers
        self._counter = secrets.randbelow(_COUNTER_MASK + 1)
        # process id -> [secret, upstream key or None while not connected]
        self._keys: dict[int, tuple[bytes, UpstreamKey | None]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def issue(self, protocol_version: int) -> tuple[int, bytes]:
        """A new (process id, secret key) for a session on ``protocol_version``."""
        if len(self._keys) > _COUNTER_MASK:
            raise RuntimeError("every cancel key of this instance is in use")
        base = self.instance_id << _COUNTER_BITS
        while True:
            self._counter = (self._counter + 1) & _COUNTER_MASK
            process_id = base | self._counter
            if process_id not in self._keys and process_id != 0:
                break
        length = _KEY_LENGTH_3_2 if protocol_version >= PROTOCOL_3_2 else _KEY_LENGTH_3_0
        secret = secrets.token_bytes(length)
        self._keys[process_id] = (secret, None)
        return process_id, secret

    def bind(self, process_id: int, upstream: UpstreamKey | None) -> None:
        """Point an issued key at the server connection its session uses now."""
        secret, _ = self._keys[process_id]
        self._keys[process_id] = (secret, upstream)

    def release(self, process_id: int) -> None:
        """Forget a key: its session ended."""
        self._keys.pop(process_id, None)

    def route(self, request: CancelRequest) -> CancelRoute | None:
        """Where ``request`` must go, or None when it cancels nothing.

        A key of this instance is checked in constant time and mapped to the
        upstream key; a key of a known peer is forwarded there untouched.
        Unknown keys, wrong secrets and sessions without a server yet get
        None: the client is told nothing, as PostgreSQL tells it nothing.
        """
        owner = instance_of(request.process_id)
        if owner != self.instance_id:
            peer = self.peers.get(owner)
            return None if peer is None else CancelRoute(peer, request, forwarded=True)
        entry = self._keys.get(request.process_id)
        secret, upstream = entry if entry is not None else (_DUMMY_SECRET, None)
        # Compare even for unknown ids, so timing does not tell which ids exist.
        matches = hmac.compare_digest(secret, request.secret_key)
        if not matches or entry is None or upstream is None:
            return None
        return CancelRoute(
            upstream.address,
            CancelRequest(process_id=upstream.process_id, secret_key=upstream.secret_key),
            forwarded=False,
        )
