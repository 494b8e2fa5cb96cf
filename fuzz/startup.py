"""Fuzz the startup-packet sanitizer and the ``options`` parser (pgwire.roles).

Input: a control byte, then a body. Control bits 0-3 pick the
:class:`~pgwire.roles.StartupPolicy` (duplicates, role parameters,
replication, an allowlist); bits 4-5 pick the entry point:

0. the body is a StartupMessage's body (after the length word): a Backend
   decodes it, as from a client, and the message is sanitized;
1. the body is NUL-separated key, value strings: a parameter list built
   directly (any text, NULs aside), sanitized;
2. the body is one ``options`` value, parsed with ``parse_options``;
3. the body is one ``replication`` value, read with ``is_replication``.

Allowed: ``StartupRefused`` (and its ``InvalidOptions``), and
``pgwire.RemoteProtocolError`` from the Backend's decoding. Checked besides,
on success: the sanitized packet sets no role (no role key, no role switch
in ``options``), is no replication connection when the policy refuses them,
names no parameter twice, holds only allowed settings, is a fixed point
(sanitizing it again changes nothing) and survives the wire (a Backend
decodes its encoding to the same parameters); ``options`` values read back
from ``join_options`` to the same switches.
"""

from __future__ import annotations

import contextlib

import pgwire as pw
from pgwire.roles import (
    ROLE_SETTINGS,
    StartupPolicy,
    StartupRefused,
    is_replication,
    join_options,
    parse_options,
    sanitize_startup,
)
from pgwire.roles._startup import normalize_setting_name

from ._common import Finding, Input, fuzz

__all__ = ["ALLOWED", "one_input", "policy"]

_PACKET_KEYS = frozenset({"user", "database", "options", "replication"})
#: The allowlist of the policies that have one.
ALLOWED = frozenset({"application_name", "search_path", "datestyle", "timezone",
                     "work_mem", "log_min_messages", "log_statement"})


def policy(bits: int) -> StartupPolicy:
    """The policy for the low 4 bits of the control byte."""
    return StartupPolicy(
        duplicates="last_wins" if bits & 1 else "refuse",
        role_parameters="strip" if bits & 2 else "refuse",
        replication="strip" if bits & 4 else "refuse",
        allowed_parameters=ALLOWED if bits & 8 else None,
    )


def _decoded(body: bytes) -> pw.StartupMessage | None:
    backend = pw.Backend()
    backend.receive_data((len(body) + 8).to_bytes(4, "big") + b"\x00\x03\x00\x00" + body)
    try:
        event = backend.next_event()
    except pw.RemoteProtocolError:
        return None
    return event if isinstance(event, pw.StartupMessage) else None


def _listed(body: bytes) -> pw.StartupMessage:
    words = body.decode("utf-8", "replace").split("\0")
    pairs = tuple(zip(words[0::2], words[1::2], strict=False))
    return pw.StartupMessage(parameters=pairs)


def _check_options(value: str) -> None:
    try:
        switches = parse_options(value)
    except StartupRefused:
        return
    again = parse_options(join_options(switches))
    if again != switches:
        raise Finding(f"options {value!r}: join_options does not read back: {switches!r} "
                      f"-> {again!r}")


def _check_sanitized(message: pw.StartupMessage, chosen: StartupPolicy,
                     from_wire: bool) -> None:
    try:
        result = sanitize_startup(message, chosen)
    except StartupRefused:
        return
    seen: set[tuple[bool, str]] = set()
    for key, value in result.parameters:
        # The packet's own keys match exactly; settings case-insensitively.
        packet = key in _PACKET_KEYS or key.startswith("_pq_.")
        name = key if packet else normalize_setting_name(key)
        if (packet, name) in seen:
            raise Finding(f"{key!r} twice in the sanitized packet {result!r}")
        seen.add((packet, name))
        if name in ROLE_SETTINGS:
            raise Finding(f"the sanitized packet sets the role: {result!r}")
        if key == "replication" and is_replication(value):
            raise Finding(f"the sanitized packet asks for replication: {result!r}")
        if key == "options":
            for switch in parse_options(value):
                if switch.sets_role:
                    raise Finding(f"the sanitized options set the role: {value!r}")
                if chosen.allowed_parameters is not None and not (
                        switch.names <= chosen.allowed_parameters):
                    raise Finding(f"the sanitized options set {switch.names}: {value!r}")
        elif chosen.allowed_parameters is not None and not packet and (
                name not in chosen.allowed_parameters):
            raise Finding(f"the sanitized packet keeps {key!r} outside the allowlist")
    again = sanitize_startup(result, chosen)
    if again != result:
        raise Finding(f"sanitizing twice changes the packet: {result!r} -> {again!r}")
    if from_wire:
        decoded = _decoded(result.encode()[8:])
        if decoded is None or decoded.parameters != result.parameters:
            raise Finding(f"the sanitized packet does not survive the wire: {result!r} -> "
                          f"{decoded!r}")


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    source = Input(data)
    control = source.byte()
    body = source.rest()
    chosen = policy(control & 0x0F)
    entry = (control >> 4) & 3
    if entry == 0:
        message = _decoded(body)
        if message is not None:
            _check_sanitized(message, chosen, from_wire=True)
    elif entry == 1:
        _check_sanitized(_listed(body), chosen, from_wire=False)
    elif entry == 2:
        _check_options(body.decode("utf-8", "replace"))
    else:
        with contextlib.suppress(StartupRefused):
            is_replication(body.decode("utf-8", "replace"))


if __name__ == "__main__":
    fuzz(one_input)
