"""Hypothesis strategies for pgwire messages, byte streams and whole conversations.

Property-test your own protocol code with these: every strategy returns
messages that encode without error and decode back to an equal message
(``Cls.decode(m.encode()[5:]) == m``), so a failure points at the code under
test, not at the data. Strings never contain NUL (the protocol cannot carry
it) and are encodable in UTF-8; element counts stay small except for a rare
example at the protocol's maximum of 65535, built from one repeated element so
tests stay fast.

Three layers, each composable with ordinary hypothesis combinators:

* one strategy per message class (:func:`queries`, :func:`binds`,
  :func:`data_rows`, :func:`error_responses`, :func:`startup_messages`, ...),
  looked up by class with :func:`strategy_for`;
* :func:`frontend_messages`, :func:`backend_messages`, :func:`messages` — any
  typed message of a direction, or any message at all;
* :func:`conversations` — a valid session as a :class:`Transcript`: the
  messages client and server exchange, in an order both a
  :class:`~pgwire.Frontend` and a :class:`~pgwire.Backend` accept; and
  :func:`chunkings` to split its byte streams the way a network might, and
  :func:`mutations` to corrupt them.

This module needs ``hypothesis`` (the ``dev`` extra); the protocol core does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeVar, cast

from hypothesis import strategies as st

from ..protocol import (
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSENCResponse,
    GSSResponse,
    HotStandbyFeedback,
    Message,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    PrimaryKeepalive,
    Query,
    ReadyForQuery,
    ReplicationMessage,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StandbyStatusUpdate,
    StartupMessage,
    Sync,
    Terminate,
    TransactionStatus,
    XLogData,
)

__all__ = [
    "MAX_COUNT",
    "Side",
    "Step",
    "Transcript",
    "authentication_cleartext_password",
    "authentication_gss",
    "authentication_gss_continue",
    "authentication_kerberos_v5",
    "authentication_md5_password",
    "authentication_ok",
    "authentication_sasl",
    "authentication_sasl_continue",
    "authentication_sasl_final",
    "authentication_sspi",
    "authentications",
    "backend_key_data",
    "backend_messages",
    "bind_completes",
    "binds",
    "cancel_requests",
    "chunkings",
    "close_completes",
    "closes",
    "command_completes",
    "conversations",
    "copy_both_responses",
    "copy_data",
    "copy_dones",
    "copy_fails",
    "copy_in_responses",
    "copy_out_responses",
    "data_rows",
    "describes",
    "empty_query_responses",
    "error_responses",
    "executes",
    "field_descriptions",
    "flushes",
    "frontend_messages",
    "function_call_responses",
    "function_calls",
    "gss_responses",
    "gssenc_requests",
    "gssenc_responses",
    "hot_standby_feedbacks",
    "int16s",
    "int32s",
    "messages",
    "mutations",
    "negotiate_protocol_versions",
    "no_data",
    "notice_responses",
    "notification_responses",
    "oids",
    "parameter_descriptions",
    "parameter_statuses",
    "parse_completes",
    "parses",
    "password_messages",
    "portal_suspended",
    "primary_keepalives",
    "queries",
    "ready_for_query",
    "replication_messages",
    "row_descriptions",
    "sasl_initial_responses",
    "sasl_responses",
    "split",
    "ssl_requests",
    "ssl_responses",
    "standby_status_updates",
    "startup_messages",
    "startup_packets",
    "strategy_for",
    "syncs",
    "terminates",
    "texts",
    "xlog_data",
]

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)
_F = TypeVar("_F", bound=Callable[..., object])


def _cached(factory: _F) -> _F:
    """Build each strategy once per arguments (strategies are immutable, and
    building and validating them costs more than drawing from them)."""
    return cast(_F, functools.cache(factory))


#: The largest element count an Int16 count field carries (PostgreSQL reads them unsigned).
MAX_COUNT: Final = 65535
# One example in this many uses MAX_COUNT elements instead of a short list.
_MAX_COUNT_ODDS: Final = 16
_INT16_MIN: Final = -(2**15)
_INT16_MAX: Final = 2**15 - 1
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT32_MAX: Final = 2**32 - 1
_UINT64_MAX: Final = 2**64 - 1
_MAX_CANCEL_KEY: Final = 256
_NEWEST_MINOR: Final = PROTOCOL_3_2 & 0xFFFF

# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


@_cached
def texts(
    *, min_size: int = 0, max_size: int = 24, encoding: str = "utf-8"
) -> st.SearchStrategy[str]:
    """Strings a protocol field can carry: no NUL, every character encodable in ``encoding``.

    Includes the empty string (unless ``min_size`` > 0), control characters and
    non-ASCII text up to astral-plane code points (for UTF-8).
    """
    return st.text(
        st.characters(codec=encoding, exclude_characters="\0"), min_size=min_size, max_size=max_size
    )


@_cached
def _names(*, min_size: int = 0) -> st.SearchStrategy[str]:
    """Identifiers: mostly plain ASCII, sometimes any protocol string."""
    plain = st.from_regex(r"[a-z_][a-z0-9_$]{0,15}", fullmatch=True)
    return st.one_of(plain, texts(min_size=min_size, max_size=12)).filter(
        lambda name: len(name) >= min_size
    )


@_cached
def _cbytes(*, min_size: int = 0, max_size: int = 32) -> st.SearchStrategy[bytes]:
    """Byte strings without NUL (for NUL-terminated byte fields)."""
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.replace(b"\0", b"\1"))


@_cached
def int16s() -> st.SearchStrategy[int]:
    """Signed 16-bit integers, edges (-32768, -1, 0, 32767) included."""
    return st.integers(_INT16_MIN, _INT16_MAX)


@_cached
def int32s() -> st.SearchStrategy[int]:
    """Signed 32-bit integers (process ids, max_rows, type modifiers), edges included."""
    return st.integers(_INT32_MIN, _INT32_MAX)


@_cached
def oids() -> st.SearchStrategy[int]:
    """Object identifiers: unsigned 32-bit, from well-known type OIDs to 4294967295."""
    return st.one_of(
        st.sampled_from((0, 16, 20, 23, 25, 1043, 1700, 2950, 3802)),
        st.integers(0, _UINT32_MAX),
        st.integers(2**31, _UINT32_MAX),
    )


@_cached
def _format_codes() -> st.SearchStrategy[int]:
    return st.sampled_from((0, 1))


@_cached
def _values(max_size: int = 32) -> st.SearchStrategy[bytes | None]:
    """A parameter or column value: bytes (possibly empty) or None for NULL."""
    return st.one_of(st.none(), st.just(b""), st.binary(max_size=max_size))


@st.composite
def _counted(
    draw: st.DrawFn,
    elements: st.SearchStrategy[_T],
    max_size: int,
    cheap: st.SearchStrategy[_T],
    allow_max_count: bool = True,
) -> tuple[_T, ...]:
    """A short tuple of ``elements``, or (rarely) MAX_COUNT copies of one ``cheap`` element."""
    if allow_max_count and draw(st.integers(0, _MAX_COUNT_ODDS - 1)) == _MAX_COUNT_ODDS - 1:
        return (draw(cheap),) * MAX_COUNT
    return tuple(draw(st.lists(elements, max_size=max_size)))


@_cached
def _sql() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from((
            "", " ", ";", "select 1", "SELECT * FROM pg_class", "begin", "COMMIT", "rollback",
            "select $1::int, $2::text", "insert into t values ($1)", "set role alice",
            "select 'ünïcødé ✓'", "copy t from stdin", "copy t to stdout", "select 1; select 2",
            "/* comment */ select E'\\x01'", "select $$dollar$$",
        )),
        texts(max_size=40),
    )


# ---------------------------------------------------------------------------
# Untyped packets of the startup phase (client -> server)
# ---------------------------------------------------------------------------

_STARTUP_KEYS: Final = (
    "database", "application_name", "options", "replication", "DateStyle", "search_path",
    "TimeZone", "role", "fallback_application_name", "extra_float_digits",
)


@_cached
def _protocol_versions() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from((PROTOCOL_3_0, PROTOCOL_3_2)),
        st.integers(_NEWEST_MINOR + 1, 0xFFFF).map(lambda minor: (3 << 16) | minor),
    )


@_cached
def _startup_pairs() -> st.SearchStrategy[list[tuple[str, str]]]:
    """Startup parameters other than user, client_encoding and ``_pq_.`` options."""
    key = st.one_of(st.sampled_from(_STARTUP_KEYS), _names(min_size=1)).filter(
        lambda k: not k.startswith("_pq_.") and k not in ("user", "client_encoding")
    )
    return st.lists(st.tuples(key, texts(max_size=16)), max_size=5)


@_cached
def _pq_option_names() -> st.SearchStrategy[list[str]]:
    return st.lists(st.from_regex(r"_pq_\.[a-z_]{1,12}", fullmatch=True),
                    min_size=1, max_size=3, unique=True)


@st.composite
def _startup_messages(
    draw: st.DrawFn,
    protocol_version: int | st.SearchStrategy[int] | None,
    user: bool,
    pq_options: bool,
) -> StartupMessage:
    if protocol_version is None:
        version = draw(_protocol_versions())
    elif isinstance(protocol_version, int):
        version = protocol_version
    else:
        version = draw(protocol_version)
    pairs = draw(_startup_pairs())
    if draw(st.booleans()):
        # Only UTF-8 spellings: another client_encoding would change how the
        # server decodes every later message of a conversation.
        pairs.insert(
            draw(st.integers(0, len(pairs))),
            ("client_encoding", draw(st.sampled_from(("UTF8", "utf8", "UNICODE", "utf-8")))),
        )
    if user:
        if draw(st.booleans()):
            # A duplicate: PostgreSQL (and StartupMessage.get) let the last one win.
            pairs.insert(draw(st.integers(0, len(pairs))), ("user", draw(texts(max_size=8))))
        name = draw(st.one_of(st.sampled_from(("postgres", "alice", "bob")),
                              texts(min_size=1, max_size=16)))
        earliest = max((i + 1 for i, (k, _) in enumerate(pairs) if k == "user"), default=0)
        pairs.insert(draw(st.integers(earliest, len(pairs))), ("user", name))
    if pq_options:
        options = draw(_pq_option_names())
        for option in options:
            pairs.insert(draw(st.integers(0, len(pairs))), (option, draw(texts(max_size=8))))
    return StartupMessage(protocol_version=version, parameters=tuple(pairs))


@_cached
def startup_messages(
    protocol_version: int | st.SearchStrategy[int] | None = None,
    *,
    user: bool = True,
    pq_options: bool | None = False,
) -> st.SearchStrategy[StartupMessage]:
    """StartupMessage packets a server accepts.

    ``protocol_version`` fixes the version (an int or a strategy); by default
    3.0, 3.2, or a newer 3.x minor the server must negotiate down. With
    ``user`` (the default) the last ``user`` parameter is non-empty, as a
    Backend requires; earlier duplicates of any key may occur (the last one
    wins). ``client_encoding``, when present, is a UTF-8 spelling.
    ``pq_options=True`` adds ``_pq_.`` protocol options (which force a
    NegotiateProtocolVersion), ``None`` sometimes does. Packets stay far below
    the 10,000-byte startup limit.
    """
    if pq_options is None:
        return st.booleans().flatmap(
            lambda options: _startup_messages(protocol_version, user, options)
        )
    return _startup_messages(protocol_version, user, pq_options)


@_cached
def ssl_requests() -> st.SearchStrategy[SSLRequest]:
    """The SSLRequest packet (it has no fields)."""
    return st.just(SSLRequest())


@_cached
def gssenc_requests() -> st.SearchStrategy[GSSENCRequest]:
    """The GSSENCRequest packet (it has no fields)."""
    return st.just(GSSENCRequest())


@_cached
def _cancel_keys(protocol_version: int | None) -> st.SearchStrategy[bytes]:
    if protocol_version is not None and protocol_version & 0xFFFF < _NEWEST_MINOR:
        return st.binary(min_size=4, max_size=4)
    short = st.binary(min_size=4, max_size=4)
    longer = st.one_of(
        st.binary(min_size=32, max_size=32),  # what PostgreSQL 18 sends
        st.binary(min_size=4, max_size=_MAX_CANCEL_KEY),
        st.binary(min_size=_MAX_CANCEL_KEY, max_size=_MAX_CANCEL_KEY),
    )
    return longer if protocol_version is not None else st.one_of(short, longer)


@_cached
def cancel_requests(protocol_version: int | None = None) -> st.SearchStrategy[CancelRequest]:
    """CancelRequest packets: any int32 process id and a valid secret key.

    The key is exactly 4 bytes for ``protocol_version`` 3.0, 4 to 256 bytes
    for 3.2 (32 is PostgreSQL 18's choice), and either when the version is
    ``None``.
    """
    return st.builds(CancelRequest, process_id=int32s(), secret_key=_cancel_keys(protocol_version))


@_cached
def startup_packets() -> st.SearchStrategy[Message]:
    """Any untyped packet of the startup phase: StartupMessage, SSLRequest,
    GSSENCRequest or CancelRequest."""
    return st.one_of(startup_messages(pq_options=None), ssl_requests(), gssenc_requests(),
                     cancel_requests())


# ---------------------------------------------------------------------------
# Typed client messages
# ---------------------------------------------------------------------------


@_cached
def queries(query: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Query]:
    """Query messages: SQL-looking text, the empty query, or arbitrary text
    (``query`` overrides the text strategy)."""
    return st.builds(Query, query=query if query is not None else _sql())


@_cached
def parses(*, allow_max_count: bool = True) -> st.SearchStrategy[Parse]:
    """Parse messages: named or unnamed statements with 0 to 8 parameter type
    OIDs (rarely 65535; not with ``allow_max_count=False``), OIDs up to 2**32-1."""
    return st.builds(
        Parse,
        statement=_names(),
        query=_sql(),
        parameter_types=_counted(oids(), 8, oids(), allow_max_count),
    )


def _format_codes_for(draw: st.DrawFn, count: int) -> tuple[int, ...]:
    """Zero, one, or one format code per value: the three shapes a server accepts."""
    shape = draw(st.sampled_from(("none", "one", "each")))
    if shape == "none":
        return ()
    if shape == "one":
        return (draw(_format_codes()),)
    if count == MAX_COUNT:
        return (draw(_format_codes()),) * MAX_COUNT
    return tuple(draw(st.lists(_format_codes(), min_size=count, max_size=count)))


@st.composite
def _binds(draw: st.DrawFn, allow_max_count: bool) -> Bind:
    parameters = draw(_counted(_values(), 8, st.sampled_from((None, b"", b"1")), allow_max_count))
    return Bind(
        portal=draw(_names()),
        statement=draw(_names()),
        parameter_formats=_format_codes_for(draw, len(parameters)),
        parameters=parameters,
        result_formats=draw(_counted(_format_codes(), 6, _format_codes(), allow_max_count)),
    )


@_cached
def binds(*, allow_max_count: bool = True) -> st.SearchStrategy[Bind]:
    """Bind messages as a server accepts them: parameters are bytes or NULL;
    there are zero, one, or one-per-parameter format codes, each 0 (text) or 1
    (binary). Counts range from 0 to 8, rarely 65535 (not with
    ``allow_max_count=False``)."""
    return _binds(allow_max_count)


@_cached
def _kinds() -> st.SearchStrategy[Literal["S", "P"]]:
    return st.sampled_from(("S", "P"))


@_cached
def describes() -> st.SearchStrategy[Describe]:
    """Describe messages for a statement ("S") or a portal ("P"), named or unnamed."""
    return st.builds(Describe, kind=_kinds(), name=_names())


@_cached
def executes() -> st.SearchStrategy[Execute]:
    """Execute messages: any portal name; ``max_rows`` 0 (all rows) or any int32."""
    return st.builds(Execute, portal=_names(), max_rows=st.one_of(st.just(0), int32s()))


@_cached
def closes() -> st.SearchStrategy[Close]:
    """Close messages for a statement ("S") or a portal ("P")."""
    return st.builds(Close, kind=_kinds(), name=_names())


@_cached
def syncs() -> st.SearchStrategy[Sync]:
    """The Sync message (no fields)."""
    return st.just(Sync())


@_cached
def flushes() -> st.SearchStrategy[Flush]:
    """The Flush message (no fields)."""
    return st.just(Flush())


@_cached
def terminates() -> st.SearchStrategy[Terminate]:
    """The Terminate message (no fields)."""
    return st.just(Terminate())


@st.composite
def _function_calls(draw: st.DrawFn, allow_max_count: bool) -> FunctionCall:
    arguments = draw(_counted(_values(), 4, st.sampled_from((None, b"")), allow_max_count))
    return FunctionCall(
        function_oid=draw(oids()),
        argument_formats=_format_codes_for(draw, len(arguments)),
        arguments=arguments,
        result_format=draw(_format_codes()),
    )


@_cached
def function_calls(*, allow_max_count: bool = True) -> st.SearchStrategy[FunctionCall]:
    """FunctionCall messages: any function OID, 0 to 4 arguments (rarely
    65535) that are bytes or NULL, and zero, one or one-per-argument format codes."""
    return _function_calls(allow_max_count)


@_cached
def copy_data(max_size: int = 64) -> st.SearchStrategy[CopyData]:
    """CopyData messages with arbitrary payloads of up to ``max_size`` bytes (empty included)."""
    return st.builds(CopyData, data=st.binary(max_size=max_size))


@_cached
def copy_dones() -> st.SearchStrategy[CopyDone]:
    """The CopyDone message (no fields)."""
    return st.just(CopyDone())


@_cached
def copy_fails() -> st.SearchStrategy[CopyFail]:
    """CopyFail messages with any error text."""
    return st.builds(CopyFail, message=texts())


@_cached
def password_messages() -> st.SearchStrategy[PasswordMessage]:
    """PasswordMessage: cleartext-like bytes or an ``md5``-prefixed hash; never NUL."""
    md5 = st.binary(min_size=16, max_size=16).map(lambda d: b"md5" + d.hex().encode())
    return st.builds(PasswordMessage, password=st.one_of(md5, _cbytes()))


@_cached
def sasl_initial_responses() -> st.SearchStrategy[SASLInitialResponse]:
    """SASLInitialResponse: a mechanism name and initial data (bytes, empty, or None)."""
    return st.builds(
        SASLInitialResponse,
        mechanism=st.one_of(st.sampled_from(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
                            texts(min_size=1, max_size=20)),
        data=st.one_of(st.none(), st.binary(max_size=64)),
    )


@_cached
def sasl_responses() -> st.SearchStrategy[SASLResponse]:
    """SASLResponse with arbitrary bytes."""
    return st.builds(SASLResponse, data=st.binary(max_size=64))


@_cached
def gss_responses() -> st.SearchStrategy[GSSResponse]:
    """GSSResponse with arbitrary token bytes."""
    return st.builds(GSSResponse, data=st.binary(max_size=64))


# ---------------------------------------------------------------------------
# Server messages
# ---------------------------------------------------------------------------


@_cached
def ssl_responses() -> st.SearchStrategy[SSLResponse]:
    """The one-byte answer to SSLRequest: accepted ('S') or not ('N')."""
    return st.builds(SSLResponse, accepted=st.booleans())


@_cached
def gssenc_responses() -> st.SearchStrategy[GSSENCResponse]:
    """The one-byte answer to GSSENCRequest: accepted ('G') or not ('N')."""
    return st.builds(GSSENCResponse, accepted=st.booleans())


@_cached
def authentication_ok() -> st.SearchStrategy[AuthenticationOk]:
    """AuthenticationOk (no fields)."""
    return st.just(AuthenticationOk())


@_cached
def authentication_kerberos_v5() -> st.SearchStrategy[AuthenticationKerberosV5]:
    """AuthenticationKerberosV5 (no fields)."""
    return st.just(AuthenticationKerberosV5())


@_cached
def authentication_cleartext_password() -> st.SearchStrategy[AuthenticationCleartextPassword]:
    """AuthenticationCleartextPassword (no fields)."""
    return st.just(AuthenticationCleartextPassword())


@_cached
def authentication_md5_password() -> st.SearchStrategy[AuthenticationMD5Password]:
    """AuthenticationMD5Password with any 4-byte salt (NUL bytes included)."""
    return st.builds(AuthenticationMD5Password, salt=st.binary(min_size=4, max_size=4))


@_cached
def authentication_gss() -> st.SearchStrategy[AuthenticationGSS]:
    """AuthenticationGSS (no fields)."""
    return st.just(AuthenticationGSS())


@_cached
def authentication_gss_continue() -> st.SearchStrategy[AuthenticationGSSContinue]:
    """AuthenticationGSSContinue with arbitrary token bytes (empty included)."""
    return st.builds(AuthenticationGSSContinue, data=st.binary(max_size=64))


@_cached
def authentication_sspi() -> st.SearchStrategy[AuthenticationSSPI]:
    """AuthenticationSSPI (no fields)."""
    return st.just(AuthenticationSSPI())


@_cached
def authentication_sasl() -> st.SearchStrategy[AuthenticationSASL]:
    """AuthenticationSASL offering one to three non-empty mechanism names."""
    mechanism = st.one_of(st.sampled_from(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "OAUTHBEARER")),
                          texts(min_size=1, max_size=20))
    return st.builds(
        AuthenticationSASL,
        mechanisms=st.lists(mechanism, min_size=1, max_size=3).map(tuple),
    )


@_cached
def authentication_sasl_continue() -> st.SearchStrategy[AuthenticationSASLContinue]:
    """AuthenticationSASLContinue with arbitrary challenge bytes."""
    return st.builds(AuthenticationSASLContinue, data=st.binary(max_size=64))


@_cached
def authentication_sasl_final() -> st.SearchStrategy[AuthenticationSASLFinal]:
    """AuthenticationSASLFinal with arbitrary outcome bytes."""
    return st.builds(AuthenticationSASLFinal, data=st.binary(max_size=64))


@_cached
def authentications() -> st.SearchStrategy[Message]:
    """Any Authentication* request, AuthenticationOk included."""
    return st.one_of(
        authentication_ok(), authentication_kerberos_v5(), authentication_cleartext_password(),
        authentication_md5_password(), authentication_gss(), authentication_gss_continue(),
        authentication_sspi(), authentication_sasl(), authentication_sasl_continue(),
        authentication_sasl_final(),
    )


_REPORTED_PARAMETERS: Final = (
    "server_version", "server_encoding", "DateStyle", "IntervalStyle", "TimeZone",
    "integer_datetimes", "standard_conforming_strings", "is_superuser", "session_authorization",
    "application_name", "default_transaction_read_only", "in_hot_standby", "scram_iterations",
    "search_path",
)


@_cached
def parameter_statuses(*, client_encoding: bool = True) -> st.SearchStrategy[ParameterStatus]:
    """ParameterStatus messages: reported settings or any name, any value.

    With ``client_encoding=False`` the name is never ``client_encoding`` (a
    new client_encoding changes how both peers encode every later message).
    """
    name = st.one_of(st.sampled_from(_REPORTED_PARAMETERS), texts())
    if client_encoding:
        encodings = st.sampled_from(("UTF8", "SQL_ASCII", "LATIN1", "WIN1252", "EUC_JP"))
        return st.one_of(
            st.builds(ParameterStatus, name=name, value=texts()),
            st.builds(ParameterStatus, name=st.just("client_encoding"), value=encodings),
        )
    return st.builds(
        ParameterStatus, name=name.filter(lambda n: n != "client_encoding"), value=texts()
    )


@_cached
def backend_key_data(protocol_version: int | None = None) -> st.SearchStrategy[BackendKeyData]:
    """BackendKeyData: any int32 process id; a 4-byte key on 3.0, 4 to 256
    bytes on 3.2, either when ``protocol_version`` is None."""
    return st.builds(BackendKeyData, process_id=int32s(), secret_key=_cancel_keys(protocol_version))


@_cached
def _statuses() -> st.SearchStrategy[TransactionStatus]:
    return st.sampled_from(TransactionStatus)


@_cached
def ready_for_query() -> st.SearchStrategy[ReadyForQuery]:
    """ReadyForQuery with each transaction status ('I', 'T', 'E')."""
    return st.builds(ReadyForQuery, status=_statuses())


@_cached
def field_descriptions() -> st.SearchStrategy[FieldDescription]:
    """Column descriptions: any name (empty included), table and type OIDs up
    to 2**32-1, any int16 attribute number and size, any int32 modifier, and
    format code 0 or 1."""
    return st.builds(
        FieldDescription,
        name=_names(),
        table_oid=oids(),
        column_attribute_number=int16s(),
        data_type_oid=oids(),
        data_type_size=st.one_of(st.sampled_from((-2, -1, 1, 2, 4, 8, 16)), int16s()),
        type_modifier=st.one_of(st.just(-1), int32s()),
        format=_format_codes(),
    )


@_cached
def row_descriptions(
    *, min_fields: int = 0, max_fields: int = 6, allow_max_count: bool = True
) -> st.SearchStrategy[RowDescription]:
    """RowDescription with ``min_fields`` to ``max_fields`` columns (zero
    columns included by default) or, rarely, 65535 identical columns."""
    if min_fields > 0:
        fields = st.lists(field_descriptions(), min_size=min_fields, max_size=max_fields).map(tuple)
    else:
        fields = _counted(field_descriptions(), max_fields, field_descriptions(), allow_max_count)
    return st.builds(RowDescription, fields=fields)


@_cached
def data_rows(
    columns: int | None = None, *, allow_max_count: bool = True
) -> st.SearchStrategy[DataRow]:
    """DataRow messages; each value is bytes (empty included) or None (NULL).

    ``columns`` fixes the number of values (to match a RowDescription);
    otherwise 0 to 8, rarely 65535.
    """
    if columns is not None:
        return st.builds(
            DataRow, values=st.lists(_values(), min_size=columns, max_size=columns).map(tuple)
        )
    return st.builds(
        DataRow, values=_counted(_values(), 8, st.sampled_from((None, b"")), allow_max_count)
    )


@_cached
def command_completes() -> st.SearchStrategy[CommandComplete]:
    """CommandComplete with realistic tags ("SELECT 5", "INSERT 0 1") or any text."""
    count = st.integers(0, 2**63 - 1)
    return st.builds(
        CommandComplete,
        tag=st.one_of(
            count.map(lambda n: f"SELECT {n}"),
            count.map(lambda n: f"INSERT 0 {n}"),
            count.map(lambda n: f"COPY {n}"),
            st.sampled_from(("BEGIN", "COMMIT", "ROLLBACK", "SET", "CREATE TABLE", "DISCARD ALL")),
            texts(),
        ),
    )


@_cached
def empty_query_responses() -> st.SearchStrategy[EmptyQueryResponse]:
    """EmptyQueryResponse (no fields)."""
    return st.just(EmptyQueryResponse())


# Codes PostgreSQL documents; ``other`` must avoid them or decoding would move
# the value to its attribute.
_DOCUMENTED_FIELD_CODES: Final = frozenset("SVCMDHPpqWstcdnFLR")
_SEVERITIES: Final = ("ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "DEBUG", "INFO", "LOG")
_SQLSTATES: Final = ("42000", "42601", "42501", "08P01", "28P01", "57014", "25P02", "00000")


@_cached
def _notice_parts() -> tuple[
    st.SearchStrategy[str | None], st.SearchStrategy[str | None], st.SearchStrategy[str | None],
    st.SearchStrategy[str | None], st.SearchStrategy[str | None],
    st.SearchStrategy[list[tuple[str, str]]],
]:
    """Field strategies of ErrorResponse/NoticeResponse: optional text, optional
    number, SQLSTATE, message, file name, undocumented fields."""
    other_code = st.characters(min_codepoint=1, max_codepoint=127).filter(
        lambda c: c not in _DOCUMENTED_FIELD_CODES
    )
    return (
        st.one_of(st.none(), texts()),
        st.one_of(st.none(), st.integers(1, 100000).map(str)),
        st.one_of(st.none(), st.sampled_from(_SQLSTATES),
                  st.from_regex(r"[0-9A-Z]{5}", fullmatch=True)),
        st.one_of(st.none(), texts(max_size=60)),
        st.one_of(st.none(), st.just("postgres.c"), texts()),
        st.lists(st.tuples(other_code, texts()), max_size=2),
    )


@st.composite
def _notice_fields(
    draw: st.DrawFn,
    cls: type[_M],
    severities: st.SearchStrategy[tuple[str | None, str | None]],
) -> _M:
    severity, nonlocalized = draw(severities)
    optional, numeric, code, message, file, other = _notice_parts()
    fields = {
        "severity": severity,
        "severity_nonlocalized": nonlocalized,
        "code": draw(code),
        "message": draw(message),
        "detail": draw(optional),
        "hint": draw(optional),
        "position": draw(numeric),
        "internal_position": draw(numeric),
        "internal_query": draw(optional),
        "where": draw(optional),
        "schema_name": draw(optional),
        "table_name": draw(optional),
        "column_name": draw(optional),
        "data_type_name": draw(optional),
        "constraint_name": draw(optional),
        "file": draw(file),
        "line": draw(numeric),
        "routine": draw(optional),
        "other": tuple(draw(other)),
    }
    return cls(**fields)


@_cached
def _severity_pairs(levels: tuple[str, ...]) -> st.SearchStrategy[tuple[str | None, str | None]]:
    level = st.sampled_from(levels)
    localized = st.sampled_from(("FEHLER", "ERREUR", "ОШИБКА", "エラー"))
    return st.one_of(
        level.map(lambda s: (s, s)),
        level.map(lambda s: (s, None)),
        st.tuples(localized, level),
    )


@_cached
def error_responses(
    *, fatal: bool | None = None
) -> st.SearchStrategy[ErrorResponse]:
    """ErrorResponse messages with any mix of the documented fields (each may
    be absent) plus undocumented field codes kept in ``other``.

    ``fatal=True`` gives only FATAL/PANIC errors (they close the session),
    ``fatal=False`` only errors that do not, ``None`` either. Localized
    severities (field S) come with the non-localized one (field V).
    """
    if fatal is None:
        levels: tuple[str, ...] = ("ERROR", "FATAL", "PANIC")
    elif fatal:
        levels = ("FATAL", "PANIC")
    else:
        levels = ("ERROR",)
    pairs = _severity_pairs(levels)
    if fatal is None:
        pairs = st.one_of(pairs, st.just((None, None)))
    elif not fatal:
        pairs = st.one_of(pairs, st.just((None, None)),
                          st.sampled_from(_SEVERITIES[3:]).map(lambda s: (s, s)))
    return _notice_fields(ErrorResponse, pairs)


@_cached
def notice_responses() -> st.SearchStrategy[NoticeResponse]:
    """NoticeResponse messages (WARNING, NOTICE, INFO, DEBUG, LOG severities)
    with any mix of fields; never FATAL."""
    pairs = st.one_of(_severity_pairs(_SEVERITIES[3:]), st.just((None, None)))
    return _notice_fields(NoticeResponse, pairs)


@_cached
def parse_completes() -> st.SearchStrategy[ParseComplete]:
    """ParseComplete (no fields)."""
    return st.just(ParseComplete())


@_cached
def bind_completes() -> st.SearchStrategy[BindComplete]:
    """BindComplete (no fields)."""
    return st.just(BindComplete())


@_cached
def close_completes() -> st.SearchStrategy[CloseComplete]:
    """CloseComplete (no fields)."""
    return st.just(CloseComplete())


@_cached
def no_data() -> st.SearchStrategy[NoData]:
    """NoData (no fields)."""
    return st.just(NoData())


@_cached
def portal_suspended() -> st.SearchStrategy[PortalSuspended]:
    """PortalSuspended (no fields)."""
    return st.just(PortalSuspended())


@_cached
def parameter_descriptions(*, allow_max_count: bool = True) -> st.SearchStrategy[
    ParameterDescription
]:
    """ParameterDescription with 0 to 8 type OIDs up to 2**32-1, rarely 65535."""
    return st.builds(
        ParameterDescription, parameter_types=_counted(oids(), 8, oids(), allow_max_count)
    )


@_cached
def _copy_responses(cls: type[_M], allow_max_count: bool) -> st.SearchStrategy[_M]:
    return st.builds(
        cls,
        format=_format_codes(),
        column_formats=_counted(_format_codes(), 8, _format_codes(), allow_max_count),
    )


@_cached
def copy_in_responses(*, allow_max_count: bool = True) -> st.SearchStrategy[CopyInResponse]:
    """CopyInResponse: text or binary overall, 0 to 8 column formats (rarely 65535)."""
    return _copy_responses(CopyInResponse, allow_max_count)


@_cached
def copy_out_responses(*, allow_max_count: bool = True) -> st.SearchStrategy[CopyOutResponse]:
    """CopyOutResponse: text or binary overall, 0 to 8 column formats (rarely 65535)."""
    return _copy_responses(CopyOutResponse, allow_max_count)


@_cached
def copy_both_responses(*, allow_max_count: bool = True) -> st.SearchStrategy[CopyBothResponse]:
    """CopyBothResponse: text or binary overall, 0 to 8 column formats (rarely 65535)."""
    return _copy_responses(CopyBothResponse, allow_max_count)


@_cached
def notification_responses() -> st.SearchStrategy[NotificationResponse]:
    """NotificationResponse: any int32 process id, any channel and payload (empty included)."""
    return st.builds(
        NotificationResponse, process_id=int32s(), channel=_names(), payload=texts(max_size=40)
    )


@_cached
def function_call_responses() -> st.SearchStrategy[FunctionCallResponse]:
    """FunctionCallResponse with a bytes result (empty included) or NULL."""
    return st.builds(FunctionCallResponse, result=_values(64))


@_cached
def negotiate_protocol_versions() -> st.SearchStrategy[NegotiateProtocolVersion]:
    """NegotiateProtocolVersion: any minor version (0 to 65535) and 0 to 3
    unrecognized ``_pq_.`` options (or any option text)."""
    option = st.one_of(st.from_regex(r"_pq_\.[a-z_]{1,12}", fullmatch=True), texts())
    return st.builds(
        NegotiateProtocolVersion,
        newest_minor_version=st.integers(0, 0xFFFF),
        unrecognized_options=st.lists(option, max_size=3).map(tuple),
    )


# ---------------------------------------------------------------------------
# Streaming replication payloads (inside CopyData)
# ---------------------------------------------------------------------------


@_cached
def _lsns() -> st.SearchStrategy[int]:
    """Log sequence numbers: unsigned 64-bit (FFFFFFFF/FFFFFFFF is valid)."""
    return st.integers(0, _UINT64_MAX)


@_cached
def _times() -> st.SearchStrategy[int]:
    """Microseconds since 2000-01-01: signed 64-bit."""
    return st.integers(_INT64_MIN, _INT64_MAX)


@_cached
def xlog_data() -> st.SearchStrategy[XLogData]:
    """XLogData payloads: any unsigned 64-bit LSNs, any timestamp, any WAL bytes."""
    return st.builds(XLogData, start_lsn=_lsns(), end_lsn=_lsns(), send_time=_times(),
                     data=st.binary(max_size=64))


@_cached
def primary_keepalives() -> st.SearchStrategy[PrimaryKeepalive]:
    """PrimaryKeepalive payloads, with and without a reply request."""
    return st.builds(PrimaryKeepalive, wal_end=_lsns(), send_time=_times(),
                     reply_requested=st.booleans())


@_cached
def standby_status_updates() -> st.SearchStrategy[StandbyStatusUpdate]:
    """StandbyStatusUpdate payloads, with and without a reply request."""
    return st.builds(StandbyStatusUpdate, written_lsn=_lsns(), flushed_lsn=_lsns(),
                     applied_lsn=_lsns(), send_time=_times(), reply_requested=st.booleans())


@_cached
def hot_standby_feedbacks() -> st.SearchStrategy[HotStandbyFeedback]:
    """HotStandbyFeedback payloads; the xmin fields are unsigned 32-bit."""
    xid = st.integers(0, _UINT32_MAX)
    return st.builds(HotStandbyFeedback, send_time=_times(), xmin=xid, xmin_epoch=xid,
                     catalog_xmin=xid, catalog_xmin_epoch=xid)


@_cached
def replication_messages() -> st.SearchStrategy[ReplicationMessage]:
    """Any streaming-replication payload (XLogData, PrimaryKeepalive,
    StandbyStatusUpdate, HotStandbyFeedback)."""
    return st.one_of(xlog_data(), primary_keepalives(), standby_status_updates(),
                     hot_standby_feedbacks())


# ---------------------------------------------------------------------------
# By class and by direction
# ---------------------------------------------------------------------------

_BY_CLASS: Final[dict[type[Message], Callable[[], st.SearchStrategy[Message]]]] = {
    StartupMessage: lambda: startup_messages(pq_options=None),
    SSLRequest: ssl_requests,
    GSSENCRequest: gssenc_requests,
    CancelRequest: cancel_requests,
    Query: queries,
    Parse: parses,
    Bind: binds,
    Describe: describes,
    Execute: executes,
    Close: closes,
    Sync: syncs,
    Flush: flushes,
    Terminate: terminates,
    FunctionCall: function_calls,
    CopyData: copy_data,
    CopyDone: copy_dones,
    CopyFail: copy_fails,
    PasswordMessage: password_messages,
    SASLInitialResponse: sasl_initial_responses,
    SASLResponse: sasl_responses,
    GSSResponse: gss_responses,
    SSLResponse: ssl_responses,
    GSSENCResponse: gssenc_responses,
    AuthenticationOk: authentication_ok,
    AuthenticationKerberosV5: authentication_kerberos_v5,
    AuthenticationCleartextPassword: authentication_cleartext_password,
    AuthenticationMD5Password: authentication_md5_password,
    AuthenticationGSS: authentication_gss,
    AuthenticationGSSContinue: authentication_gss_continue,
    AuthenticationSSPI: authentication_sspi,
    AuthenticationSASL: authentication_sasl,
    AuthenticationSASLContinue: authentication_sasl_continue,
    AuthenticationSASLFinal: authentication_sasl_final,
    ParameterStatus: parameter_statuses,
    BackendKeyData: backend_key_data,
    ReadyForQuery: ready_for_query,
    RowDescription: row_descriptions,
    DataRow: data_rows,
    CommandComplete: command_completes,
    EmptyQueryResponse: empty_query_responses,
    ErrorResponse: error_responses,
    NoticeResponse: notice_responses,
    ParseComplete: parse_completes,
    BindComplete: bind_completes,
    CloseComplete: close_completes,
    NoData: no_data,
    PortalSuspended: portal_suspended,
    ParameterDescription: parameter_descriptions,
    CopyInResponse: copy_in_responses,
    CopyOutResponse: copy_out_responses,
    CopyBothResponse: copy_both_responses,
    NotificationResponse: notification_responses,
    FunctionCallResponse: function_call_responses,
    NegotiateProtocolVersion: negotiate_protocol_versions,
}


@_cached
def strategy_for(cls: type[_M]) -> st.SearchStrategy[_M]:
    """The strategy of this module that generates ``cls`` messages.

    Covers every concrete message class exported by :mod:`pgwire`; raises
    ``KeyError`` for anything else.
    """
    try:
        factory = _BY_CLASS[cls]
    except KeyError:
        raise KeyError(f"no strategy for {cls!r}: pass a concrete pgwire message class") from None
    # The table pairs each class with a strategy of that class.
    return cast("st.SearchStrategy[_M]", factory())


@_cached
def frontend_messages() -> st.SearchStrategy[Message]:
    """Any typed message a client sends (every class in ``FRONTEND_TYPED_CLASSES``,
    the four 'p' messages included); not the untyped startup packets."""
    return st.one_of(
        queries(), parses(), binds(), describes(), executes(), closes(), syncs(), flushes(),
        terminates(), function_calls(), copy_data(), copy_dones(), copy_fails(),
        password_messages(), sasl_initial_responses(), sasl_responses(), gss_responses(),
    )


@_cached
def backend_messages() -> st.SearchStrategy[Message]:
    """Any typed message a server sends (every class in ``BACKEND_TYPED_CLASSES``);
    not the one-byte SSL/GSSENC answers."""
    return st.one_of(
        authentications(), parameter_statuses(), backend_key_data(), ready_for_query(),
        row_descriptions(), data_rows(), command_completes(), empty_query_responses(),
        error_responses(), notice_responses(), parse_completes(), bind_completes(),
        close_completes(), no_data(), portal_suspended(), parameter_descriptions(),
        copy_in_responses(), copy_out_responses(), copy_both_responses(),
        notification_responses(), function_call_responses(), negotiate_protocol_versions(),
        copy_data(), copy_dones(),
    )


@_cached
def messages() -> st.SearchStrategy[Message]:
    """Any message of either direction: typed messages, startup packets and
    the one-byte SSL/GSSENC answers."""
    return st.one_of(frontend_messages(), backend_messages(), startup_packets(),
                     ssl_responses(), gssenc_responses())


# ---------------------------------------------------------------------------
# Byte streams
# ---------------------------------------------------------------------------


@st.composite
def _chunkings(draw: st.DrawFn, data: bytes, max_chunks: int) -> list[bytes]:
    if not data:
        return []
    size = st.one_of(st.integers(1, 8), st.integers(1, len(data)))
    return split(data, draw(st.lists(size, max_size=max_chunks - 1)))


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``data`` into pieces of the given sizes, the rest as a last piece.

    Sizes past the end are ignored; the pieces always join back to ``data``.
    """
    chunks: list[bytes] = []
    pos = 0
    for step in sizes:
        if pos >= len(data):
            break
        chunks.append(data[pos : pos + step])
        pos += step
    if pos < len(data):
        chunks.append(data[pos:])
    return chunks


def chunkings(data: bytes, *, max_chunks: int = 64) -> st.SearchStrategy[list[bytes]]:
    """Ways to split ``data`` into at most ``max_chunks`` non-empty chunks, as a
    network might deliver it.

    ``b"".join(chunks) == data`` always holds. Chunk sizes mix 1 to 8 bytes
    (so headers and length words get cut) with sizes up to the whole stream;
    ``[]`` for empty data.
    """
    if max_chunks < 1:
        raise ValueError("max_chunks must be at least 1")
    return _chunkings(data, max_chunks)


@_cached
def _mutation_parts() -> tuple[st.SearchStrategy[bytes], st.SearchStrategy[int]]:
    """Bytes to insert (lying length words among them) and byte values to write."""
    inserted = st.one_of(
        st.binary(min_size=1, max_size=8),
        st.sampled_from((b"\0", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"Z\0\0\0\5I")),
    )
    return inserted, st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)) | st.integers(0, 255)


@st.composite
def _mutations(draw: st.DrawFn, data: bytes, max_edits: int) -> bytes:
    inserted, byte_values = _mutation_parts()
    result = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        edit = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate")))
        if not result:
            edit = "insert"
        if edit == "insert":
            at = draw(st.integers(0, len(result)))
            result[at:at] = draw(inserted)
            continue
        at = draw(st.integers(0, len(result) - 1))
        if edit == "flip":
            result[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            result[at] = draw(byte_values)
        elif edit == "delete":
            del result[at : at + draw(st.integers(1, 8))]
        else:
            del result[at:]
    return bytes(result)


def mutations(data: bytes, *, max_edits: int = 4) -> st.SearchStrategy[bytes]:
    """``data`` corrupted by 1 to ``max_edits`` edits: a flipped bit, a byte set
    to an edge value (0x00, 0x7F, 0x80, 0xFF) or any value, inserted bytes
    (lengths such as -1 and 2**31-1 among them), a deleted run, or a
    truncation. For fuzzing a parser with input that is almost valid; the
    result may happen to be valid still.
    """
    if max_edits < 1:
        raise ValueError("max_edits must be at least 1")
    return _mutations(data, max_edits)


# ---------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------

#: Who sends a message in a :class:`Transcript`.
Side = Literal["client", "server"]
#: One message of a conversation and its sender.
Step = tuple[Side, Message]


@dataclass(frozen=True, slots=True)
class Transcript:
    """A valid session: every message in the order both peers see it.

    ``steps`` pairs each message with its sender. Replaying it drives a
    :class:`~pgwire.Frontend` (``send`` each client message, feed the server's
    bytes and take one event per server message) and a :class:`~pgwire.Backend`
    (feed the client's bytes, take one event per client message, ``send``
    each server message) without a protocol error; every event equals the
    message of its step. With ``eof`` both streams then end (``receive_data(b"")``
    gives ConnectionClosed).

    The byte streams can be fed ahead of time, whole or in any chunks: a
    connection only reads as far as the events taken from it. Transcripts
    contain no SSLRequest/GSSENCRequest, whose answers must arrive with
    nothing after them, and keep ``client_encoding`` at UTF-8, so
    :meth:`client_bytes` and :meth:`server_bytes` are the exact streams.
    """

    steps: tuple[Step, ...]
    eof: bool = False
    #: What the generator aimed for, to help read a failing example.
    summary: tuple[str, ...] = field(default=(), compare=False)

    def client_messages(self) -> list[Message]:
        """The messages the client sends, in order."""
        return [message for side, message in self.steps if side == "client"]

    def server_messages(self) -> list[Message]:
        """The messages the server sends, in order."""
        return [message for side, message in self.steps if side == "server"]

    def client_bytes(self) -> bytes:
        """The client -> server byte stream."""
        return b"".join(message.encode() for message in self.client_messages())

    def server_bytes(self) -> bytes:
        """The server -> client byte stream."""
        return b"".join(message.encode() for message in self.server_messages())


@dataclass
class _Cycle:
    """One request/response exchange of the ready phase, before interleaving."""

    opening: list[Step] = field(default_factory=list)
    body: list[Step] = field(default_factory=list)

    @property
    def pipelinable(self) -> bool:
        # Another request may be sent before this one's answers only if the
        # client does not have to speak in the middle of them (COPY FROM, Flush).
        return all(side == "server" for side, _ in self.body)


_SAFE_STATUS_NAMES: Final = tuple(n for n in _REPORTED_PARAMETERS if n != "server_encoding")


@_cached
def _async_messages() -> st.SearchStrategy[Message]:
    """Messages a server may send at any time after authentication."""
    return st.one_of(
        notice_responses(),
        notification_responses(),
        st.builds(ParameterStatus, name=st.sampled_from(_SAFE_STATUS_NAMES),
                  value=texts(max_size=12)),
    )


@_cached
def _replication_copy_data() -> tuple[st.SearchStrategy[CopyData], st.SearchStrategy[CopyData]]:
    """CopyData a server and a client send during streaming replication."""
    server = st.one_of(xlog_data(), primary_keepalives()).map(
        lambda payload: payload.to_copy_data())
    client = st.one_of(standby_status_updates(), hot_standby_feedbacks()).map(
        lambda payload: payload.to_copy_data())
    return st.one_of(server, copy_data(16)), client


class _Writer:
    """Draws one conversation, tracking what the state machine will check."""

    def __init__(self, draw: st.DrawFn, max_cycles: int) -> None:
        self.draw = draw
        self.max_cycles = max_cycles
        self.steps: list[Step] = []
        self.summary: list[str] = []
        self.status = TransactionStatus.IDLE
        self.protocol_version = PROTOCOL_3_0
        self.closed = False

    # -- small pieces -------------------------------------------------------

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def asyncs(self, *, notices_only: bool = False) -> list[Step]:
        """Zero or more asynchronous server messages (notice, notification, status)."""
        found: list[Step] = []
        while self.chance(12):
            if notices_only:
                found.append(("server", self.draw(notice_responses())))
                continue
            message: Message = self.draw(_async_messages())
            found.append(("server", message))
        return found

    def with_asyncs(self, server: list[Message]) -> list[Step]:
        """Server messages with asynchronous ones sprinkled in before each."""
        steps: list[Step] = []
        for message in server:
            steps += self.asyncs()
            steps.append(("server", message))
        return steps

    def ready(self, failed: bool) -> ReadyForQuery:
        """The ReadyForQuery ending a cycle, with a plausible transaction status."""
        if failed:
            if self.status is not TransactionStatus.IDLE:
                self.status = TransactionStatus.FAILED
        elif self.status is TransactionStatus.FAILED:
            self.status = self.draw(st.sampled_from(
                (TransactionStatus.FAILED, TransactionStatus.IDLE)))
        else:
            self.status = self.draw(st.sampled_from(
                (TransactionStatus.IDLE, TransactionStatus.IN_TRANSACTION)))
        return ReadyForQuery(status=self.status)

    def error(self) -> ErrorResponse:
        return self.draw(error_responses(fatal=False))

    def rows(self, columns: int) -> list[Message]:
        count = self.draw(st.integers(0, 3))
        return [self.draw(data_rows(columns)) for _ in range(count)]

    def row_description(self) -> RowDescription:
        return self.draw(row_descriptions(max_fields=4, allow_max_count=False))

    def copy_data_out(self) -> list[Message]:
        return [self.draw(copy_data(32)) for _ in range(self.draw(st.integers(0, 3)))]

    def client_copy_data(self) -> list[Step]:
        return [("client", self.draw(copy_data(32))) for _ in range(self.draw(st.integers(0, 3)))]

    # -- startup ------------------------------------------------------------

    def startup(self) -> None:
        pq_options = self.chance(15)
        startup = self.draw(startup_messages(pq_options=pq_options))
        self.steps.append(("client", startup))
        requested_minor = startup.minor_version
        options = tuple(k for k, _ in startup.parameters if k.startswith("_pq_."))
        minor = requested_minor
        if requested_minor > _NEWEST_MINOR or options:
            minor = min(requested_minor, _NEWEST_MINOR)
            self.steps.append(("server", NegotiateProtocolVersion(
                newest_minor_version=minor, unrecognized_options=options)))
        self.protocol_version = (3 << 16) | minor
        self.summary.append(f"startup 3.{requested_minor} -> 3.{minor}")
        self.steps += self.asyncs(notices_only=True)
        if not self.authenticate():
            return
        self.session_setup()

    def authenticate(self) -> bool:
        """Append an authentication exchange; False if it ended the session."""
        method = self.draw(st.sampled_from(
            ("trust", "password", "md5", "sasl", "gss", "sspi", "fail")))
        self.summary.append(f"auth {method}")
        steps = self.steps
        if method == "password":
            steps.append(("server", AuthenticationCleartextPassword()))
            steps.append(("client", self.draw(password_messages())))
        elif method in ("md5", "fail"):
            steps.append(("server", self.draw(authentication_md5_password())))
            steps.append(("client", self.draw(password_messages())))
        elif method == "sasl":
            steps.append(("server", self.draw(authentication_sasl())))
            steps.append(("client", self.draw(sasl_initial_responses())))
            steps += self.asyncs(notices_only=True)
            steps.append(("server", self.draw(authentication_sasl_continue())))
            steps.append(("client", self.draw(sasl_responses())))
            steps.append(("server", self.draw(authentication_sasl_final())))
        elif method in ("gss", "sspi"):
            steps.append(("server", AuthenticationGSS() if method == "gss"
                          else AuthenticationSSPI()))
            steps.append(("client", self.draw(gss_responses())))
            for _ in range(self.draw(st.integers(0, 2))):
                steps.append(("server", self.draw(authentication_gss_continue())))
                if self.chance(70):
                    steps.append(("client", self.draw(gss_responses())))
        steps += self.asyncs(notices_only=True)
        if method == "fail":
            steps.append(("server", self.draw(error_responses(fatal=True))))
            self.closed = True
            return False
        steps.append(("server", AuthenticationOk()))
        return True

    def session_setup(self) -> None:
        server: list[Message] = [
            ParameterStatus(name="client_encoding", value="UTF8"),
            ParameterStatus(name="server_encoding", value="UTF8"),
        ]
        for _ in range(self.draw(st.integers(0, 4))):
            server.append(ParameterStatus(name=self.draw(st.sampled_from(_SAFE_STATUS_NAMES)),
                                          value=self.draw(texts(max_size=12))))
        if self.chance(90):
            server.insert(self.draw(st.integers(0, len(server))),
                          self.draw(backend_key_data(self.protocol_version)))
        self.steps += self.with_asyncs(server)
        if self.chance(5):
            # e.g. "database does not exist": FATAL before the first ReadyForQuery.
            self.steps.append(("server", self.draw(error_responses(fatal=True))))
            self.summary.append("setup fatal")
            self.closed = True
            return
        self.steps.append(("server", ReadyForQuery(status=TransactionStatus.IDLE)))

    # -- the ready phase ----------------------------------------------------

    def cycles(self) -> None:
        cycles = [self.cycle() for _ in range(self.draw(st.integers(0, self.max_cycles)))]
        sent = 0
        for index, cycle in enumerate(cycles):
            if sent <= index:
                self.steps += cycle.opening
                sent = index + 1
            # Pipelining: later requests go out before this one's answers.
            while (
                sent < len(cycles)
                and all(c.pipelinable for c in cycles[index:sent])
                and self.chance(30)
            ):
                self.steps += cycles[sent].opening
                self.summary.append(f"pipelined cycle {sent}")
                sent += 1
            self.steps += cycle.body

    def cycle(self) -> _Cycle:
        kind = self.draw(st.sampled_from(
            ("simple", "simple", "extended", "extended", "function", "sync", "idle",
             "copy-both")))
        self.summary.append(kind)
        if kind == "simple":
            return self.simple_query()
        if kind == "extended":
            return self.extended_batch()
        if kind == "function":
            call = self.draw(function_calls(allow_max_count=False))
            failed = self.chance(25)
            answer: Message = self.error() if failed else self.draw(function_call_responses())
            return _Cycle([("client", call)], self.with_asyncs([answer, self.ready(failed)]))
        if kind == "sync":
            return _Cycle([("client", Sync())], self.with_asyncs([self.ready(False)]))
        if kind == "idle":
            return _Cycle([], self.asyncs() or [("server", self.draw(notification_responses()))])
        return self.copy_both()

    def simple_query(self) -> _Cycle:
        cycle = _Cycle([("client", self.draw(queries()))])
        body = cycle.body
        failed = False
        for _ in range(self.draw(st.integers(1, 3))):
            result = self.draw(st.sampled_from(
                ("select", "command", "empty", "copy-out", "copy-in")))
            fail_here = self.chance(15)
            if result == "copy-in":
                failed = self.copy_in(body, fail_here)
            elif result == "copy-out":
                server: list[Message] = [self.draw(copy_out_responses(allow_max_count=False)),
                                         *self.copy_data_out()]
                if fail_here:
                    server.append(self.error())
                else:
                    server += [CopyDone(), CommandComplete(tag="COPY 1")]
                body += self.with_asyncs(server)
                failed = fail_here
            elif result == "select":
                description = self.row_description()
                server = [description, *self.rows(len(description.fields))]
                server.append(self.error() if fail_here else self.draw(command_completes()))
                body += self.with_asyncs(server)
                failed = fail_here
            elif result == "empty":
                body += self.with_asyncs([self.error() if fail_here else EmptyQueryResponse()])
                failed = fail_here
            else:
                body += self.with_asyncs(
                    [self.error() if fail_here else self.draw(command_completes())])
                failed = fail_here
            if failed:
                break
        body += self.with_asyncs([self.ready(failed)])
        return cycle

    def copy_in(self, body: list[Step], fail: bool, extended: bool = False) -> bool:
        """COPY FROM STDIN after the request; returns whether it failed."""
        body += self.with_asyncs([self.draw(copy_in_responses(allow_max_count=False))])
        body += self.client_copy_data()
        how = self.draw(st.sampled_from(("server-error", "copy-fail"))) if fail else "done"
        if how == "server-error":
            body += self.with_asyncs([self.error()])
            if extended:
                body.append(("client", Sync()))
            return True
        body.append(("client", self.draw(copy_fails()) if how == "copy-fail" else CopyDone()))
        if extended:
            # The server swallowed the batch's Sync during COPY; libpq sends another.
            body.append(("client", Sync()))
        body += self.with_asyncs([self.error() if how == "copy-fail"
                                  else CommandComplete(tag="COPY 1")])
        return how == "copy-fail"

    def copy_both(self) -> _Cycle:
        start = Query(query="START_REPLICATION SLOT s LOGICAL 0/0")
        cycle = _Cycle([("client", start)])
        body = cycle.body
        body += self.with_asyncs([self.draw(copy_both_responses(allow_max_count=False))])
        server_payload, client_payload = _replication_copy_data()
        for _ in range(self.draw(st.integers(0, 4))):
            if self.draw(st.booleans()):
                body.append(("server", self.draw(server_payload)))
            else:
                body.append(("client", self.draw(client_payload)))
        if self.chance(15):
            body += self.with_asyncs([self.error()])
            body += self.with_asyncs([self.ready(True)])
            return cycle
        if self.draw(st.booleans()):
            body.append(("client", CopyDone()))
            body += self.with_asyncs([*self.copy_data_out(), CopyDone()])
        else:
            body += self.with_asyncs([*self.copy_data_out(), CopyDone()])
            body += self.client_copy_data()
            body.append(("client", CopyDone()))
        server: list[Message] = []
        if self.chance(30):
            description = self.row_description()
            server += [description, *self.rows(len(description.fields)),
                       CommandComplete(tag="SELECT 1")]
        server += [CommandComplete(tag="START_REPLICATION"), self.ready(False)]
        body += self.with_asyncs(server)
        return cycle

    def extended_batch(self) -> _Cycle:
        """Parse/Bind/Describe/Execute/Close ... Sync, and the server's answers."""
        ops: list[tuple[Message, list[Message]]] = []
        copy_in = False
        for _ in range(self.draw(st.integers(1, 2))):
            # One statement: what Describe reports is what Execute returns, as
            # with PostgreSQL (a RowDescription describes the same statement's rows).
            result = self.draw(st.sampled_from(
                ("rows", "rows", "suspended", "empty", "copy-out", "copy-in")))
            description: Message = NoData()
            width = 0
            if result in ("rows", "suspended"):
                row_description = self.row_description()
                description = row_description
                width = len(row_description.fields)
            statement = self.draw(_names())
            portal = self.draw(_names())
            types: tuple[int, ...] = self.draw(st.lists(oids(), max_size=3).map(tuple))
            if self.chance(70):
                parse = replace(self.draw(parses(allow_max_count=False)), statement=statement)
                types = parse.parameter_types
                ops.append((parse, [ParseComplete()]))
            if self.chance(30):
                ops.append((Describe(kind="S", name=statement),
                            [ParameterDescription(parameter_types=types), description]))
            bind = self.draw(binds(allow_max_count=False))
            ops.append((replace(bind, statement=statement, portal=portal), [BindComplete()]))
            if self.chance(40):
                ops.append((Describe(kind="P", name=portal), [description]))
            if result == "copy-in":
                ops.append((Execute(portal=portal), []))
                copy_in = True
                break
            if result == "suspended":
                ops.append((Execute(portal=portal, max_rows=self.draw(st.integers(1, 5))),
                            [*self.rows(width), PortalSuspended()]))
                ops.append((Execute(portal=portal), [*self.rows(width),
                                                     self.draw(command_completes())]))
            elif result == "rows":
                ops.append((replace(self.draw(executes()), portal=portal),
                            [*self.rows(width), self.draw(command_completes())]))
            elif result == "empty":
                ops.append((Execute(portal=portal), [EmptyQueryResponse()]))
            else:
                ops.append((Execute(portal=portal), [
                    self.draw(copy_out_responses(allow_max_count=False)),
                    *self.copy_data_out(), CopyDone(), CommandComplete(tag="COPY 2")]))
            if self.chance(25):
                ops.append((Close(kind=self.draw(_kinds()),
                                  name=self.draw(st.sampled_from((statement, portal)))),
                            [CloseComplete()]))
        if copy_in:
            return self.extended_copy_in(ops)

        fail_at = self.draw(st.integers(0, len(ops) - 1)) if self.chance(20) else None
        flush_at = self.draw(st.integers(1, len(ops))) if self.chance(20) else None
        answers: list[list[Message]] = []
        for index, (_, responses) in enumerate(ops):
            if index == fail_at:
                partial = responses[: self.draw(st.integers(0, max(0, len(responses) - 1)))]
                answers.append([*partial, self.error()])
                break
            answers.append(responses)
        failed = fail_at is not None
        cycle = _Cycle()
        if flush_at is None:
            cycle.opening = [("client", request) for request, _ in ops] + [("client", Sync())]
            cycle.body = self.with_asyncs(
                [m for group in answers for m in group] + [self.ready(failed)])
            return cycle
        # Flush: the server answers the first requests before the rest are sent.
        self.summary.append(f"flush after {flush_at}")
        cycle.opening = [("client", request) for request, _ in ops[:flush_at]]
        cycle.opening.append(("client", Flush()))
        cycle.body = self.with_asyncs([m for group in answers[:flush_at] for m in group])
        cycle.body += [("client", request) for request, _ in ops[flush_at:]]
        cycle.body.append(("client", Sync()))
        cycle.body += self.with_asyncs(
            [m for group in answers[flush_at:] for m in group] + [self.ready(failed)])
        return cycle

    def extended_copy_in(self, ops: list[tuple[Message, list[Message]]]) -> _Cycle:
        self.summary.append("extended copy-in")
        cycle = _Cycle([("client", request) for request, _ in ops] + [("client", Sync())])
        cycle.body = self.with_asyncs([m for _, responses in ops for m in responses])
        failed = self.copy_in(cycle.body, self.chance(25), extended=True)
        cycle.body += self.with_asyncs([self.ready(failed)])
        return cycle

    # -- the end ----------------------------------------------------------------

    def ending(self) -> bool:
        """Append how the session ends; True if the streams then close (EOF)."""
        if self.closed:
            return self.draw(st.booleans())
        how = self.draw(st.sampled_from(("terminate", "fatal", "open")))
        self.summary.append(f"end {how}")
        if how == "terminate":
            self.steps.append(("client", Terminate()))
            return self.draw(st.booleans())
        if how == "fatal":
            self.steps += self.asyncs()
            self.steps.append(("server", self.draw(error_responses(fatal=True))))
            return self.draw(st.booleans())
        self.steps += self.asyncs()
        return self.draw(st.booleans())


@st.composite
def _conversations(draw: st.DrawFn, max_cycles: int) -> Transcript:
    writer = _Writer(draw, max_cycles)
    if writer.chance(3):
        writer.summary.append("cancel")
        writer.steps.append(("client", draw(cancel_requests())))
        return Transcript(steps=tuple(writer.steps), eof=draw(st.booleans()),
                          summary=tuple(writer.summary))
    writer.startup()
    if not writer.closed:
        writer.cycles()
    eof = writer.ending()
    return Transcript(steps=tuple(writer.steps), eof=eof, summary=tuple(writer.summary))


@_cached
def conversations(*, max_cycles: int = 5) -> st.SearchStrategy[Transcript]:
    """Whole sessions as :class:`Transcript` objects, valid for both peers.

    A session starts with a StartupMessage (protocol 3.0, 3.2 or newer, with
    NegotiateProtocolVersion when the server must refuse the version or
    ``_pq_.`` options), authenticates (trust, cleartext, MD5, SASL, GSS/SSPI,
    or a FATAL failure), sets up (ParameterStatus, BackendKeyData with a key
    length valid for the negotiated version), then runs up to ``max_cycles``
    query cycles: simple queries with several results, rows, errors, COPY TO
    and COPY FROM; extended batches (Parse, Bind, Describe, Execute with
    PortalSuspended, Close, Flush, errors skipping to Sync, COPY in both
    directions); function calls; bare Syncs; replication (CopyBoth). Requests
    are sometimes pipelined ahead of earlier answers; notices, notifications
    and ParameterStatus arrive at any point the protocol allows. It ends with
    Terminate, a FATAL error, or neither, and the streams then close or not
    (:attr:`Transcript.eof`). A few transcripts are a lone CancelRequest.
    """
    return _conversations(max_cycles)
