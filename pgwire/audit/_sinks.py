"""Where audit records go: a JSON Lines file with a hash chain, Python logging,
a PostgreSQL table, or any object with ``write(records)`` and ``close()``.

Sinks run in the audit queue's background thread (:mod:`pgwire.audit._queue`),
never on the data path, so they may block. A sink's ``write`` either writes
the whole batch or raises; the queue then retries the same batch later.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from ..sqlclient import SQLConnection
from ..tls import SSLMODES, SSLMode
from ._chain import ChainError, canonical_json, read_chain_tail, seal_records
from ._records import AuditRecord, Fact

__all__ = [
    "POSTGRES_COLUMNS",
    "JsonLinesSink",
    "LoggingSink",
    "PostgresSink",
    "Sink",
    "make_sink",
    "quote_identifier",
]

logger = logging.getLogger("pgwire.audit")


@runtime_checkable
class Sink(Protocol):
    """What the audit queue writes to.

    ``write`` gets a batch of records, in order, from one thread at a time;
    it writes all of them or raises (the queue retries the same batch).
    ``close`` releases files and connections; a later ``write`` may reopen
    them. Two optional attributes tune batching: ``batch_size`` (most
    records per ``write``, default 500) and ``flush_interval`` (seconds to
    wait for a batch to fill, default 0: write what is there). A third is
    internal for now: ``takes_facts = True`` (:class:`JsonLinesSink`) says
    ``write`` also takes the facts a record is built from (the private
    ``Fact`` tuples of :mod:`pgwire.audit._records`, mixed with records), so
    the queue skips building those records.
    """

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Write every record of the batch, or raise."""

    def close(self) -> None:
        """Flush and release what the sink holds."""


# -- JSON Lines ---------------------------------------------------------------------------


class JsonLinesSink:
    """A JSON Lines file, one record per line, hash-chained (see :mod:`pgwire.audit._chain`).

    ``path`` may contain ``{pid}``, replaced by the writing process's id (one
    file per worker process: two processes must never append to one chain;
    the sink holds an exclusive ``flock`` on the file while it is open and
    refuses a file another writer holds). An existing file is continued:
    its last line is checked and the chain goes on from it. ``key`` (bytes,
    or text taken as UTF-8) makes every hash an HMAC-SHA-256, so whoever can
    edit the file cannot recompute the chain without it. ``fsync`` forces
    each batch to disk before it counts as written.

    When it closes it logs the chain's end (``seq`` and ``hash``) on the
    ``pgwire.audit`` logger: keep that line elsewhere, it is the anchor that
    makes cutting records off the end of the file detectable.
    """

    batch_size = 500
    #: write() serializes facts without building their records.
    takes_facts = True

    def __init__(self, path: str | os.PathLike[str], key: bytes | str | None = None, *,
                 fsync: bool = False, flush_interval: float = 0.05) -> None:
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0, not {flush_interval!r}")
        #: Seconds the writer waits for a batch to fill: one wake-up of the
        #: writer thread per interval instead of one per statement (under
        #: load that was most of the audit's cost on the data path).
        self.flush_interval = flush_interval
        self.path_template = os.fspath(path)
        self._key = key.encode() if isinstance(key, str) else key
        self.fsync = fsync
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._hash = ""
        self._dirty = False
        # A broken or foreign file is reported now, at configuration time.
        read_chain_tail(self._resolve(), self._key)

    def _resolve(self) -> Path:
        return Path(self.path_template.replace("{pid}", str(os.getpid())))

    @property
    def anchor(self) -> tuple[int, str] | None:
        """The ``(seq, hash)`` of the last line written, once the file is open."""
        return (self._seq, self._hash) if self._fd is not None else None

    def write(self, records: Sequence[AuditRecord | Fact]) -> None:
        """Append the records (or facts) as chained lines, in one write."""
        fd = self._fd if self._fd is not None else self._open()
        if self._dirty:
            # A failed write left part of a batch behind: cut it off, or stop.
            os.ftruncate(fd, self._size)
            self._dirty = False
        lines, seq, digest = seal_records(records, self._seq, self._hash, self._key)
        data = memoryview("".join(lines).encode("ascii"))
        try:
            while data:
                written = os.write(fd, data)
                data = data[written:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            self._dirty = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
                self._dirty = False
            raise
        self._size = os.fstat(fd).st_size
        self._seq, self._hash = seq, digest

    def close(self) -> None:
        """Log the chain's end (the anchor), unlock and close the file."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            logger.info("audit file %s ends at seq %d hash %s", self._path, self._seq,
                        self._hash, extra={"audit_anchor": {"path": str(self._path),
                                                            "seq": self._seq,
                                                            "hash": self._hash}})
        finally:
            os.close(fd)  # releases the flock

    def _open(self) -> int:
        path = self._resolve()
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ChainError(f"{path} is held by another audit writer: give each proxy "
                                 "process its own file (put {pid} in the path)") from None
            size = os.fstat(fd).st_size
            seq, digest = read_chain_tail(path, self._key)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._path, self._size = fd, path, size
        self._seq, self._hash = seq, digest
        self._dirty = False
        return fd

    def __repr__(self) -> str:
        return f"<JsonLinesSink {self.path_template}>"


# -- logging ------------------------------------------------------------------------------


class LoggingSink:
    """One log record per audit record on a :mod:`logging` logger.

    The message is the record's canonical JSON; the record itself is in
    ``extra`` as the attribute ``audit`` (a dict), for handlers and
    formatters that want fields. ``level`` is a number or a name (``INFO``).
    """

    batch_size = 500
    flush_interval = 0.0

    def __init__(self, logger: str = "pgwire.audit", level: int | str = logging.INFO) -> None:
        if isinstance(level, str):
            number = logging.getLevelNamesMapping().get(level.upper())
            if number is None:
                raise ValueError(f"unknown logging level {level!r}")
            level = number
        self.logger = logging.getLogger(logger)
        self.level = level

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Log each record."""
        log = self.logger
        if not log.isEnabledFor(self.level):
            return
        for record in records:
            data = record.as_dict()
            log.log(self.level, "%s", canonical_json(data), extra={"audit": data})

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"<LoggingSink {self.logger.name}>"


# -- PostgreSQL ---------------------------------------------------------------------------

#: The columns :class:`PostgresSink` fills; the rest of a record goes to ``details``.
POSTGRES_COLUMNS: Final = (
    "time", "event", "session_id", "proxy_pid", "client_address", "startup_user", "upstream_role",
    "effective_role", "backend_pid", "database", "application_name", "request", "sql",
    "status", "duration", "rows", "sqlstate", "details", "batch",
)
_COLUMN_TYPES: Final = {
    "time": "timestamptz NOT NULL", "event": "text NOT NULL", "session_id": "bigint",
    "proxy_pid": "integer",
    "client_address": "text", "startup_user": "text", "upstream_role": "text",
    "effective_role": "text", "backend_pid": "integer", "database": "text",
    "application_name": "text", "request": "bigint", "sql": "text", "status": "text",
    "duration": "double precision", "rows": "bigint", "sqlstate": "text",
    "details": "jsonb NOT NULL", "batch": "text",
}


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, whatever it holds: ``a"b`` -> ``"a""b"``."""
    if not name or "\x00" in name:
        raise ValueError(f"not a usable identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _parse_address(address: tuple[str, int] | Sequence[Any] | str) -> tuple[str, int] | str:
    if isinstance(address, str):
        if "/" in address:
            return address  # a Unix socket path
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"address must be HOST:PORT or a socket path, not {address!r}")
        return host.strip("[]"), int(port)
    host, port = tuple(address)
    return str(host), int(port)


class PostgresSink:
    """Batches of records into a PostgreSQL table, over a connection of its own.

    Each batch is one ``INSERT ... SELECT ... FROM jsonb_populate_recordset``
    with the batch as a single JSON parameter, so a batch is written whole
    or not at all. The table (``schema.table``, quoted as identifiers) is
    created if missing, with the columns of :data:`POSTGRES_COLUMNS` plus an
    identity ``id``; a record's other fields go to ``details`` (jsonb). A
    failed batch drops the connection and raises; the queue retries it, with
    backoff, on a new connection. A batch whose COMMIT happened but whose
    answer was lost is retried with a guard (no row of that ``batch`` may
    exist yet), so a retry never writes a batch twice.
    """

    def __init__(self, address: tuple[str, int] | Sequence[Any] | str, user: str, *,
                 password: str | None = None, database: str = "postgres",
                 table: str = "pgwire_audit", batch_size: int = 500,
                 flush_interval: float = 1.0, sslmode: SSLMode = "disable",
                 schema: str | None = None, create_table: bool = True,
                 connect_timeout: float = 10.0) -> None:
        if sslmode not in SSLMODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size!r}")
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0, not {flush_interval!r}")
        self.address = _parse_address(address)
        self.user = user
        self._password = password
        self.database = database
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.sslmode: SSLMode = sslmode
        self.create_table = create_table
        self.connect_timeout = connect_timeout
        self.table = (quote_identifier(schema) + "." if schema else "") + quote_identifier(table)
        self._index_name = quote_identifier(f"{table}_batch_idx")
        self._conn: SQLConnection | None = None
        self._token = secrets.token_hex(6)
        self._batches = 0
        self._retrying: tuple[Sequence[AuditRecord], str] | None = None
        columns = ", ".join(quote_identifier(c) for c in POSTGRES_COLUMNS)
        selected = ", ".join(f"r.{quote_identifier(c)}" for c in POSTGRES_COLUMNS[:-1])
        self._insert = (f"INSERT INTO {self.table} ({columns}) SELECT {selected}, $2 "
                        f"FROM jsonb_populate_recordset(NULL::{self.table}, $1::jsonb) "
                        "WITH ORDINALITY AS r")
        self._insert_once = (self._insert + f" WHERE NOT EXISTS (SELECT 1 FROM {self.table} "
                             "WHERE batch = $2)")
        self._insert += " ORDER BY r.ordinality"
        self._insert_once += " ORDER BY r.ordinality"

    def create_table_sql(self) -> str:
        """The statements that create the table and its index if missing."""
        columns = ",\n    ".join(f"{quote_identifier(c)} {_COLUMN_TYPES[c]}"
                                 for c in POSTGRES_COLUMNS)
        return (f"CREATE TABLE IF NOT EXISTS {self.table} (\n"
                "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
                f"    {columns}\n);\n"
                f"CREATE INDEX IF NOT EXISTS {self._index_name} ON {self.table} (batch);")

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Insert the batch in one statement (reconnecting first if needed)."""
        retry = self._retrying is not None and self._retrying[0] is records
        if retry:
            assert self._retrying is not None
            batch = self._retrying[1]
        else:
            self._batches += 1
            batch = f"{self._token}-{self._batches}"
        payload = json.dumps([_row(record) for record in records], separators=(",", ":"),
                             allow_nan=False)
        self._retrying = (records, batch)
        try:
            conn = self._connection()
            conn.query(self._insert_once if retry else self._insert, [payload, batch])
        except BaseException:
            self._drop_connection()
            raise
        self._retrying = None

    def close(self) -> None:
        """Close the connection."""
        self._drop_connection()

    def _connection(self) -> SQLConnection:
        conn = self._conn
        if conn is None or conn.closed:
            conn = SQLConnection.connect(self.address, user=self.user, password=self._password,
                                         database=self.database, sslmode=self.sslmode,
                                         timeout=self.connect_timeout,
                                         parameters={"application_name": "pgwire audit"})
            if self.create_table:
                try:
                    conn.execute(self.create_table_sql())
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        address = self.address if isinstance(self.address, str) else (
            f"{self.address[0]}:{self.address[1]}")
        return f"<PostgresSink {address}/{self.database} {self.table}>"


def _row(record: AuditRecord) -> dict[str, Any]:
    data = record.as_dict()
    row: dict[str, Any] = {name: data.pop(name) for name in POSTGRES_COLUMNS if name in data}
    row["details"] = data
    return row


# -- from settings ------------------------------------------------------------------------

_SINK_TYPES: Final = {"jsonl": JsonLinesSink, "logging": LoggingSink, "postgres": PostgresSink}


def make_sink(settings: Mapping[str, Any] | str) -> Sink:
    """A sink from configuration data, as a TOML table gives it.

    ``type`` is ``jsonl``, ``logging``, ``postgres``, or ``"module:Class"``
    for your own class; the other keys are its keyword arguments. A key
    ending in ``_env`` names an environment variable holding the value of
    the key without the suffix (``key_env``, ``password_env``), so secrets
    stay out of the file. A plain string is the type alone (``"logging"``).
    """
    if isinstance(settings, str):
        settings = {"type": settings}
    arguments = dict(settings)
    kind = arguments.pop("type", None)
    if not isinstance(kind, str):
        raise ValueError('an audit sink needs a type: "jsonl", "logging", "postgres" or '
                         '"module:Class"')
    for name in [k for k in arguments if k.endswith("_env")]:
        variable = arguments.pop(name)
        target = name.removesuffix("_env")
        if target in arguments:
            raise ValueError(f"give {target} or {name}, not both")
        value = os.environ.get(str(variable))
        if value is None:
            raise ValueError(f"{name} names the environment variable {variable!r}, which is "
                             "not set")
        arguments[target] = value
    factory: Any = _SINK_TYPES.get(kind)
    if factory is None:
        if ":" not in kind:
            raise ValueError(f"unknown audit sink type {kind!r}: use jsonl, logging, postgres "
                             'or "module:Class"')
        module_name, _, attribute = kind.partition(":")
        factory = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    sink = factory(**arguments)
    if not isinstance(sink, Sink):
        raise TypeError(f"{kind} made {type(sink).__name__}, which has no write(records) "
                        "and close()")
    return sink
