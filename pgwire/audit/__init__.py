"""Audit records, their sinks, and the hash chain of audit files.

The :class:`~pgwire.middleware.audit.Audit` middleware builds the records
(one dataclass per event, :mod:`pgwire.audit._records`) and puts them in an
:class:`AuditQueue`, whose thread hands them to a sink:

- :class:`JsonLinesSink`: a JSON Lines file with a hash chain, checked by
  :func:`verify_chain` (and ``pgwire audit verify FILE``);
- :class:`LoggingSink`: Python :mod:`logging`;
- :class:`PostgresSink`: a PostgreSQL table, in batches;
- any object with ``write(records)`` and ``close()`` (:class:`Sink`).

See ``docs/audit.md``.
"""

from ._chain import (
    GENESIS,
    ChainError,
    VerifyResult,
    canonical_json,
    chain_hash,
    read_chain_tail,
    seal,
    verify_chain,
)
from ._queue import WHEN_FULL, AuditQueue, AuditStats, WhenFull
from ._records import (
    EVENTS,
    AuditRecord,
    AuthRecord,
    BindRecord,
    CompletionRecord,
    ConnectRecord,
    DisconnectRecord,
    ErrorRecord,
    ExecuteRecord,
    FunctionCallRecord,
    ParseRecord,
    QueryRecord,
    RoleChangeRecord,
    RoleDecisionRecord,
    RoleMappingRecord,
    TLSRecord,
    rows_from_tag,
    utc_now,
)
from ._sinks import (
    POSTGRES_COLUMNS,
    JsonLinesSink,
    LoggingSink,
    PostgresSink,
    Sink,
    make_sink,
    quote_identifier,
)

__all__ = [
    "EVENTS",
    "GENESIS",
    "POSTGRES_COLUMNS",
    "WHEN_FULL",
    "AuditQueue",
    "AuditRecord",
    "AuditStats",
    "AuthRecord",
    "BindRecord",
    "ChainError",
    "CompletionRecord",
    "ConnectRecord",
    "DisconnectRecord",
    "ErrorRecord",
    "ExecuteRecord",
    "FunctionCallRecord",
    "JsonLinesSink",
    "LoggingSink",
    "ParseRecord",
    "PostgresSink",
    "QueryRecord",
    "RoleChangeRecord",
    "RoleDecisionRecord",
    "RoleMappingRecord",
    "Sink",
    "TLSRecord",
    "VerifyResult",
    "WhenFull",
    "canonical_json",
    "chain_hash",
    "make_sink",
    "quote_identifier",
    "read_chain_tail",
    "rows_from_tag",
    "seal",
    "utc_now",
    "verify_chain",
]
