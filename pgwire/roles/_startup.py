"""Startup parameters as PostgreSQL 15 reads them: parse, check and rebuild.

A client's StartupMessage can set the role a session runs as in more ways
than a glance shows, and a proxy that rewrites or polices roles must read
the packet exactly as the server will. This module does that, with pure
functions and no I/O:

- :func:`split_options` and :func:`parse_options` read the ``options``
  parameter the way the backend does (``pg_split_opts`` in
  ``src/backend/utils/init/postinit.c``, then ``process_postgres_switches``
  in ``src/backend/tcop/postgres.c``), and say which settings every switch
  makes at login; :func:`join_options` writes settings back so that the
  server parses them to the same thing.
- :func:`sanitize_startup` applies a :class:`StartupPolicy`: duplicate keys,
  the parameters that set the role (``role``, ``session_authorization``, in
  keys or in ``options``), replication connections, and an optional
  allowlist. It returns the packet to send upstream or raises
  :class:`StartupRefused` with the SQLSTATE to answer the client with.

How PostgreSQL 15 reads a startup packet (``ProcessStartupPacket`` in
``src/backend/postmaster/postmaster.c``, ``process_startup_options`` in
``postinit.c``; each point also checked against a 15.18 server):

- The keys ``database``, ``user``, ``options`` and ``replication`` are
  matched exactly (``strcmp``); a later duplicate replaces an earlier one, so
  ``user=app`` followed by ``user=postgres`` logs in as ``postgres``. Keys
  starting with ``_pq_.`` are protocol options. Every other key is a setting
  (GUC), appended to a list: all duplicates are applied in order, the last
  wins, and names match case-insensitively (``ROLE`` is ``role``).
- ``options`` is applied first, then the key settings, all with the
  client's authority (``PGC_S_CLIENT``), after authentication. A role set
  here becomes the session's *default* role: ``RESET ROLE`` and
  ``DISCARD ALL`` return to it.
- ``options`` is split into words at ASCII whitespace (C ``isspace`` in the
  server's C or UTF-8 ctype: space, tab, newline, vertical tab, form feed,
  carriage return; not U+00A0 nor the ASCII separators 0x1C-0x1F); a
  backslash makes the next character part of the word. The words are read
  with ``getopt`` and the option string
  ``B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:``, so switches cluster
  (``-ecrole=x`` is ``-e`` then ``-c role=x``), an argument is attached
  (``-crole=x``) or the next word (``-c role=x``, taken even if it starts
  with ``-``), and ``--name=value`` is ``-c name=value``. In a ``-c`` or
  ``--`` setting the name ends at the first ``=`` and every ``-`` in the name
  becomes ``_`` (``ParseLongOption`` in ``src/backend/utils/misc/guc.c``):
  ``--session-authorization=x`` sets ``session_authorization``.
- Any word that is not a switch, an unknown switch letter, a switch missing
  its argument, or a bad ``-t``/``-f`` argument ends the login with FATAL
  42601 "invalid command-line argument for server process: WORD"; ``-c`` or
  ``--`` without ``=`` ends it with 42601 "-c NAME requires a value" /
  "--NAME requires a value". A lone ``--`` ends the switches; a word after
  it is an invalid argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ..protocol import StartupMessage
from ._state import ROLE_SETTINGS

__all__ = [
    "DEFAULT_POLICY",
    "ROLE_SETTINGS",
    "InvalidOptions",
    "OptionSetting",
    "StartupPolicy",
    "StartupRefused",
    "is_replication",
    "join_options",
    "normalize_setting_name",
    "parse_options",
    "sanitize_startup",
    "split_options",
]


# C isspace() in the C locale, and for single bytes in UTF-8 locales.
_WHITESPACE: Final = frozenset(" \t\n\v\f\r")
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# The keys ProcessStartupPacket handles itself (exact, case-sensitive match).
_PACKET_KEYS: Final = frozenset({"user", "database", "options", "replication"})

# process_postgres_switches: switches that take an argument, and those that do not.
_WITH_ARGUMENT: Final = frozenset("BcCDdfhkNprStvW-")
_WITHOUT_ARGUMENT: Final = frozenset("bEeFijlnOPsT")
# Switches with one fixed effect (the GUC set from the argument, or to a constant).
_SETS_ARGUMENT: Final = {
    "B": "shared_buffers", "h": "listen_addresses", "k": "unix_socket_directories",
    "N": "max_connections", "p": "port", "S": "work_mem", "W": "post_auth_delay",
}
_SETS_CONSTANT: Final = {
    "e": ("datestyle", "euro"), "F": ("fsync", "false"), "i": ("listen_addresses", "*"),
    "l": ("ssl", "true"), "O": ("allow_system_table_mods", "true"),
    "P": ("ignore_system_indexes", "true"), "s": ("log_statement_stats", "true"),
}
# -f X: set_plan_disabling_options() turns one planner method off by first letter.
_PLAN_METHODS: Final = {
    "s": "enable_seqscan", "i": "enable_indexscan", "o": "enable_indexonlyscan",
    "b": "enable_bitmapscan", "t": "enable_tidscan", "n": "enable_nestloop",
    "m": "enable_mergejoin", "h": "enable_hashjoin",
}
# -C, -D, -r, -v (with an argument) and -b, -E, -j, -n, -T do nothing when a
# client sends them: they act only on the postmaster's own command line.

_SYNTAX_ERROR: Final = "42601"
_PROTOCOL_VIOLATION: Final = "08P01"
_INSUFFICIENT_PRIVILEGE: Final = "42501"
_INVALID_PARAMETER_VALUE: Final = "22023"


# -- errors -----------------------------------------------------------------------------


class StartupRefused(Exception):
    """The startup packet is not acceptable: answer the client with FATAL ``sqlstate``.

    ``message`` (and ``detail``, ``hint`` when set) are written for the
    client, like PostgreSQL's own; a middleware turns this into
    ``Reject(sqlstate, message, detail, hint)``.
    """

    def __init__(self, sqlstate: str, message: str, *, detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (SQLSTATE {self.sqlstate})"


class InvalidOptions(StartupRefused):
    """An ``options`` value PostgreSQL would refuse: SQLSTATE 42601, as the server says.

    Also raised for a value ending in an unescaped backslash, which the
    server silently drops; a proxy refuses it rather than guess.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(_SYNTAX_ERROR, message, hint=hint)


def _invalid_argument(word: str) -> InvalidOptions:
    return InvalidOptions(f"invalid command-line argument for server process: {word}",
                          hint='Startup options take switches such as "-c name=value" or '
                               '"--name=value"; escape spaces in values with a backslash.')


# -- names ------------------------------------------------------------------------------


def normalize_setting_name(name: str) -> str:
    """The name PostgreSQL looks a setting up by: ASCII letters folded to lower case.

    PostgreSQL compares setting names case-insensitively for ASCII only
    (``guc_name_compare``), so ``ROLE`` is ``role`` but a non-ASCII letter
    is never folded onto an ASCII one.
    """
    return name.translate(_ASCII_LOWER)


def _long_option_name(name: str) -> str:
    # ParseLongOption: every '-' of the name becomes '_'.
    return normalize_setting_name(name.replace("-", "_"))


# -- one switch -------------------------------------------------------------------------


def _c_atoi(text: str) -> int:
    """C ``atoi`` as glibc computes it (strtol, clamped, then cut to 32 bits)."""
    position = 0
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    sign = 1
    if position < len(text) and text[position] in "+-":
        sign = -1 if text[position] == "-" else 1
        position += 1
    digits = 0
    while position < len(text) and "0" <= text[position] <= "9":
        digits = min(digits * 10 + ord(text[position]) - 48, 2**63)
        position += 1
    value = max(-(2**63), min(sign * digits, 2**63 - 1))
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _debug_settings(argument: str) -> tuple[tuple[str, str], ...]:
    # set_debug_options() for a backend (never PGC_POSTMASTER here).
    level = _c_atoi(argument)
    settings = [("log_min_messages", f"debug{level}" if level > 0 else "notice")]
    if level >= 2:
        settings.append(("log_statement", "all"))
    for threshold, name in ((3, "debug_print_parse"), (4, "debug_print_plan"),
                            (5, "debug_print_rewritten")):
        if level >= threshold:
            settings.append((name, "true"))
    return tuple(settings)


def _stats_setting(argument: str) -> str | None:
    # get_stats_option_name(): "pa..." parser, "pl..." planner, "e..." executor.
    if argument.startswith("pa"):
        return "log_parser_stats"
    if argument.startswith("pl"):
        return "log_planner_stats"
    if argument.startswith("e"):
        return "log_executor_stats"
    return None


@dataclass(frozen=True, slots=True)
class OptionSetting:
    """One switch of a startup ``options`` value, as the client wrote it.

    ``switch`` is the switch letter (``"c"`` for ``-c name=value`` and
    ``-cname=value``, ``"-"`` for ``--name=value``, or another letter such
    as ``"B"``); ``argument`` is what followed it, unescaped (``None`` for
    switches that take none). :attr:`settings` says what the switch sets at
    login. Build a ``-c`` setting with :meth:`set`.

    Raises ``ValueError`` for a switch PostgreSQL does not accept from a
    client or an argument it would refuse, so every instance is one that
    :func:`join_options` can write and :func:`parse_options` reads back.
    """

    switch: str
    argument: str | None = None

    def __post_init__(self) -> None:
        switch, argument = self.switch, self.argument
        if switch in _WITHOUT_ARGUMENT:
            if argument is not None:
                raise ValueError(f"switch -{switch} takes no argument, got {argument!r}")
            return
        if switch not in _WITH_ARGUMENT:
            raise ValueError(f"PostgreSQL has no startup switch {switch!r}")
        if not argument:
            raise ValueError(f"switch -{switch} needs a non-empty argument")
        if "\0" in argument:
            raise ValueError("a startup option cannot contain a NUL character")
        if switch in "c-" and "=" not in argument:
            raise ValueError(f"-{switch} {argument!r} needs the form name=value")
        if switch == "t" and _stats_setting(argument) is None:
            raise ValueError(f"-t takes parser, planner or executor, not {argument!r}")
        if switch == "f" and argument[0] not in _PLAN_METHODS:
            raise ValueError(f"-f takes one of s, i, o, b, t, n, m, h, not {argument!r}")

    @classmethod
    def set(cls, name: str, value: str, *, long: bool = False) -> OptionSetting:
        """``-c name=value`` (or ``--name=value`` with ``long=True``)."""
        if "=" in name:
            raise ValueError(f"a setting name cannot contain '=': {name!r}")
        return cls("-" if long else "c", f"{name}={value}")

    @property
    def name(self) -> str | None:
        """For ``-c``/``--``: the setting's name as written; otherwise ``None``."""
        if self.switch in "c-" and self.argument is not None:
            return self.argument.partition("=")[0]
        return None

    @property
    def value(self) -> str | None:
        """For ``-c``/``--``: the value (everything after the first ``=``); else ``None``."""
        if self.switch in "c-" and self.argument is not None:
            return self.argument.partition("=")[2]
        return None

    @property
    def settings(self) -> tuple[tuple[str, str], ...]:
        """The ``(setting, value)`` pairs this switch makes at login, names normalized.

        Empty for the switches a client may send but that do nothing (``-C``,
        ``-D``, ``-r``, ``-v``, ``-b``, ``-E``, ``-j``, ``-n``, ``-T``).
        """
        switch, argument = self.switch, self.argument
        if switch in "c-":
            assert argument is not None
            name, _, value = argument.partition("=")
            return ((_long_option_name(name), value),)
        if switch in _SETS_CONSTANT:
            return (_SETS_CONSTANT[switch],)
        if argument is None:
            return ()
        if switch in _SETS_ARGUMENT:
            return ((_SETS_ARGUMENT[switch], argument),)
        if switch == "d":
            return _debug_settings(argument)
        if switch == "t":
            stats = _stats_setting(argument)
            assert stats is not None
            return ((stats, "true"),)
        if switch == "f":
            return ((_PLAN_METHODS[argument[0]], "false"),)
        return ()

    @property
    def names(self) -> frozenset[str]:
        """The normalized names of the settings this switch makes."""
        return frozenset(name for name, _ in self.settings)

    @property
    def sets_role(self) -> bool:
        """True when this switch sets ``role`` or ``session_authorization``."""
        return not self.names.isdisjoint(ROLE_SETTINGS)


# -- options strings --------------------------------------------------------------------


def split_options(value: str) -> list[str]:
    """Split an ``options`` value into words, as ``pg_split_opts`` does.

    Words are separated by ASCII whitespace; a backslash makes the next
    character (a space, a backslash, anything) part of the word and is
    itself dropped. Raises :class:`InvalidOptions` for a value ending in a
    backslash that escapes nothing: PostgreSQL drops it silently, or, when it
    stands alone, passes an empty word that it then refuses.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = False
    escaped = False
    for char in value:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
            in_word = True
        elif char in _WHITESPACE:
            if in_word:
                words.append("".join(word))
                word.clear()
                in_word = False
        else:
            word.append(char)
            in_word = True
    if escaped:
        raise InvalidOptions("invalid command-line argument for server process: the startup "
                             "options end with a backslash that escapes nothing",
                             hint="Write a backslash as \\\\ and a space as \\ (backslash, space).")
    if in_word:
        words.append("".join(word))
    return words


def parse_options(value: str) -> list[OptionSetting]:
    """Read an ``options`` value into its switches, as PostgreSQL 15 does at login.

    Every ``-c``, ``--name=value`` and single-letter switch becomes one
    :class:`OptionSetting`, in order; clustered switches (``-ecrole=x``)
    become several. Anything the server would refuse raises
    :class:`InvalidOptions` (SQLSTATE 42601, PostgreSQL's wording); nothing
    else is ever raised.
    """
    if "\0" in value:
        # No wire packet can carry one (NUL ends the string); a packet built in code can.
        raise InvalidOptions("an options value cannot contain a NUL character")
    words = split_options(value)
    settings: list[OptionSetting] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            # getopt's end of switches: PostgreSQL takes no other argument.
            if index < len(words):
                raise _invalid_argument(words[index])
            break
        if len(word) < 2 or word[0] != "-":
            raise _invalid_argument(word)
        position = 1
        while position < len(word):
            switch = word[position]
            position += 1
            if switch in _WITHOUT_ARGUMENT:
                settings.append(OptionSetting(switch))
                continue
            if switch not in _WITH_ARGUMENT:
                raise _invalid_argument(word)
            if position < len(word):
                argument = word[position:]
            elif index < len(words):
                argument = words[index]
                index += 1
            else:
                raise _invalid_argument(word)
            settings.append(_switch_with_argument(switch, argument))
            break
    return settings


def _switch_with_argument(switch: str, argument: str) -> OptionSetting:
    if switch in "c-" and "=" not in argument:
        shown = f"--{argument}" if switch == "-" else f"-c {argument}"
        raise InvalidOptions(f"{shown} requires a value",
                             hint="Give the setting as name=value.")
    if (switch == "t" and _stats_setting(argument) is None) or (
        switch == "f" and argument[0] not in _PLAN_METHODS
    ):
        raise _invalid_argument(argument)
    return OptionSetting(switch, argument)


def _escape(word: str) -> str:
    return "".join(f"\\{char}" if char == "\\" or char in _WHITESPACE else char
                   for char in word)


def join_options(settings: Iterable[OptionSetting]) -> str:
    """Write switches as an ``options`` value PostgreSQL reads back to the same switches.

    Each switch is written on its own (``-c name=value``, ``--name=value``,
    ``-B 128``, ``-F``), with whitespace and backslashes escaped by a
    backslash, so ``parse_options(join_options(s)) == list(s)``.
    """
    words: list[str] = []
    for setting in settings:
        if setting.switch == "-":
            assert setting.argument is not None
            words.append("--" + _escape(setting.argument))
        elif setting.argument is None:
            words.append("-" + setting.switch)
        else:
            words.append("-" + setting.switch)
            words.append(_escape(setting.argument))
    return " ".join(words)


# -- replication ------------------------------------------------------------------------


def _parse_bool(value: str) -> bool | None:
    """PostgreSQL's ``parse_bool``: a prefix of true/false/yes/no, on/off, 1/0; else None."""
    lowered = value.lower() if value.isascii() else None
    if not lowered:
        return None
    for word, meaning, shortest in (("true", True, 1), ("false", False, 1), ("yes", True, 1),
                                    ("no", False, 1), ("on", True, 2), ("off", False, 2),
                                    ("1", True, 1), ("0", False, 1)):
        if shortest <= len(lowered) <= len(word) and word.startswith(lowered):
            return meaning
    return None


def is_replication(value: str) -> bool:
    """True when a ``replication`` startup value asks for a replication connection.

    ``database`` (logical) and anything PostgreSQL reads as true are
    replication; what it reads as false is not. Raises
    :class:`StartupRefused` (22023, PostgreSQL's message) for any other
    value, which the server refuses too.
    """
    if value == "database":
        return True
    meaning = _parse_bool(value)
    if meaning is None:
        raise StartupRefused(_INVALID_PARAMETER_VALUE,
                             f'invalid value for parameter "replication": "{value}"',
                             hint='Valid values are: "false", 0, "true", 1, "database".')
    return meaning


# -- policy -----------------------------------------------------------------------------

_DUPLICATES: Final = ("refuse", "last_wins")
_STRIP_OR_REFUSE: Final = ("refuse", "strip")


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupPolicy:
    """What :func:`sanitize_startup` does with each kind of risky startup parameter.

    - ``duplicates``: ``"refuse"`` (default) a packet naming any parameter
      twice (08P01), or ``"last_wins"``: keep only the last, as PostgreSQL
      applies it, so what the proxy checks is what the server uses.
    - ``role_parameters``: the ``role`` and ``session_authorization`` keys
      (any case) and every ``options`` switch that sets them (any
      spelling): ``"refuse"`` (default, FATAL 42501) or ``"strip"`` them,
      keeping the rest of ``options``.
    - ``replication``: a replication connection (``replication=true`` or
      ``database``; its commands bypass any SQL guard): ``"refuse"``
      (default, 42501) or ``"strip"`` the key so the session is an ordinary
      one. ``replication=false`` passes either way.
    - ``allowed_parameters``: ``None`` (default) passes every other
      parameter; a set of setting names (any iterable is accepted) refuses
      (42501) every setting outside it, whether a key or inside ``options``.
      ``user``, ``database``, ``options`` itself and ``_pq_.`` protocol
      options are always allowed.
    """

    duplicates: Literal["refuse", "last_wins"] = "refuse"
    role_parameters: Literal["refuse", "strip"] = "refuse"
    replication: Literal["refuse", "strip"] = "refuse"
    allowed_parameters: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.duplicates not in _DUPLICATES:
            raise ValueError(f"duplicates must be 'refuse' or 'last_wins', not "
                             f"{self.duplicates!r}")
        for name in ("role_parameters", "replication"):
            if getattr(self, name) not in _STRIP_OR_REFUSE:
                raise ValueError(f"{name} must be 'refuse' or 'strip', not "
                                 f"{getattr(self, name)!r}")
        allowed: object = self.allowed_parameters
        if allowed is not None:
            if isinstance(allowed, str) or not isinstance(allowed, Iterable):
                raise ValueError("allowed_parameters must be a list of setting names, not "
                                 f"{allowed!r}")
            names = list(allowed)
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"allowed_parameters holds setting names, not {name!r}")
            object.__setattr__(self, "allowed_parameters",
                               frozenset(normalize_setting_name(name) for name in names))

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> StartupPolicy:
        """Build a policy from a mapping (a TOML table); unknown keys raise ValueError."""
        known = {"duplicates", "role_parameters", "replication", "allowed_parameters"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown startup policy setting(s): {', '.join(unknown)}; "
                             f"expected {', '.join(sorted(known))}")
        return cls(**settings)  # type: ignore[arg-type]


#: The default policy: refuse duplicates, role parameters and replication.
DEFAULT_POLICY: Final = StartupPolicy()


def _identity(key: str) -> tuple[str, str]:
    """What makes two startup keys the same parameter to PostgreSQL."""
    if key in _PACKET_KEYS or key.startswith("_pq_."):
        return ("packet", key)
    return ("setting", normalize_setting_name(key))


def _refuse_role(where: str) -> StartupRefused:
    return StartupRefused(
        _INSUFFICIENT_PRIVILEGE,
        f"setting the role at login ({where}) is not allowed through this proxy",
        detail="The proxy decides which role the session runs as.",
        hint="Connect without role or session_authorization in the startup parameters "
             "or options; use SET ROLE after login where the proxy allows it.")


def _refuse_unlisted(name: str, where: str) -> StartupRefused:
    return StartupRefused(
        _INSUFFICIENT_PRIVILEGE,
        f'startup parameter "{name}" is not allowed through this proxy',
        detail=f"It was given {where}; the proxy accepts only its allowed parameters.",
        hint="Remove it from the connection settings, or ask the operator to allow it.")


def sanitize_startup(startup: StartupMessage,
                     policy: StartupPolicy = DEFAULT_POLICY) -> StartupMessage:
    """The startup packet to send upstream, or :class:`StartupRefused`.

    Applies ``policy`` (see :class:`StartupPolicy`) and keeps every other
    parameter, ``user`` and ``database`` included, in its original order
    and spelling. A stripped ``options`` switch is removed and the rest of
    the value rewritten with :func:`join_options` (the key is dropped when
    nothing is left). The protocol version is kept.

    SQLSTATEs: 08P01 for a duplicate parameter (the packet is ambiguous,
    and PostgreSQL reports malformed startup packets as protocol
    violations); 42601 for ``options`` the server would refuse (its own
    code and wording); 22023 for a ``replication`` value it would refuse
    (its own); 42501 for what the policy forbids (role settings,
    replication, unlisted parameters), the code PostgreSQL uses when a
    login may not set a role (``permission denied to set role``) or start a
    replication connection.
    """
    parameters = list(startup.parameters)
    seen: dict[tuple[str, str], int] = {}
    for index, (key, _) in enumerate(parameters):
        identity = _identity(key)
        if identity in seen and policy.duplicates == "refuse":
            first = parameters[seen[identity]][0]
            also = "" if first == key else f' (also given as "{first}")'
            raise StartupRefused(
                _PROTOCOL_VIOLATION, f'duplicate startup parameter "{key}"{also}',
                detail="PostgreSQL would silently use the last value.",
                hint="Send each startup parameter once.")
        seen[identity] = index
    # After last_wins: only the last of each; with refuse nothing was dropped.
    parameters = [pair for index, pair in enumerate(parameters)
                  if seen[_identity(pair[0])] == index]

    allowed = policy.allowed_parameters
    kept: list[tuple[str, str]] = []
    for key, value in parameters:
        if key in ("user", "database") or key.startswith("_pq_."):
            kept.append((key, value))
        elif key == "options":
            options = _sanitize_options(value, policy)
            if options:
                kept.append((key, options))
        elif key == "replication":
            if is_replication(value):
                if policy.replication == "refuse":
                    raise StartupRefused(
                        _INSUFFICIENT_PRIVILEGE,
                        "replication connections are not allowed through this proxy",
                        detail=f'The startup packet asks for replication="{value}"; '
                               "replication commands bypass the proxy's SQL checks.",
                        hint="Connect to the server directly for replication.")
            else:
                kept.append((key, value))
        elif normalize_setting_name(key) in ROLE_SETTINGS:
            if policy.role_parameters == "refuse":
                raise _refuse_role(f'startup parameter "{key}"')
        elif allowed is not None and normalize_setting_name(key) not in allowed:
            raise _refuse_unlisted(key, "as a startup parameter")
        else:
            kept.append((key, value))
    return StartupMessage(protocol_version=startup.protocol_version, parameters=tuple(kept))


def _sanitize_options(value: str, policy: StartupPolicy) -> str:
    """The ``options`` value to forward ('' for none), or StartupRefused."""
    switches = parse_options(value)
    kept: list[OptionSetting] = []
    allowed = policy.allowed_parameters
    for switch in switches:
        if switch.sets_role:
            if policy.role_parameters == "refuse":
                raise _refuse_role(f'options switch "{_show_switch(switch)}"')
            continue
        unlisted = sorted(switch.names - allowed) if allowed is not None else []
        if unlisted:
            raise _refuse_unlisted(unlisted[0], f'in options ("{_show_switch(switch)}")')
        kept.append(switch)
    if len(kept) == len(switches):
        return value  # nothing removed: forward the client's own spelling
    return join_options(kept)


def _show_switch(switch: OptionSetting) -> str:
    return join_options([switch])
