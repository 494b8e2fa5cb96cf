"""The server->client byte stream the benchmarks decode, built with pgwire's encoders.

One simple-query result: a RowDescription of five columns, ``rows`` DataRows
with text-format values of varied lengths and some NULLs, CommandComplete
("SELECT n") and ReadyForQuery. Values come from a seeded generator, so every
run (and every benchmark) sees exactly the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

import pgwire as pw

#: Chunk size the benchmarks feed: a typical socket read.
CHUNK_SIZE: Final = 64 * 1024

#: Default number of DataRows in the stream.
DEFAULT_ROWS: Final = 200_000

SEED: Final = 20240613

# Column OIDs from pg_type.
INT4_OID: Final = 23
TEXT_OID: Final = 25
FLOAT8_OID: Final = 701
TIMESTAMP_OID: Final = 1114
BOOL_OID: Final = 16

#: The query whose answer the stream pretends to be.
QUERY: Final = "SELECT id, name, price, created_at, active FROM products"

COLUMNS: Final = (
    pw.FieldDescription(name="id", table_oid=16384, column_attribute_number=1,
                        data_type_oid=INT4_OID, data_type_size=4),
    pw.FieldDescription(name="name", table_oid=16384, column_attribute_number=2,
                        data_type_oid=TEXT_OID, data_type_size=-1),
    pw.FieldDescription(name="price", table_oid=16384, column_attribute_number=3,
                        data_type_oid=FLOAT8_OID, data_type_size=8),
    pw.FieldDescription(name="created_at", table_oid=16384, column_attribute_number=4,
                        data_type_oid=TIMESTAMP_OID, data_type_size=8),
    pw.FieldDescription(name="active", table_oid=16384, column_attribute_number=5,
                        data_type_oid=BOOL_OID, data_type_size=1),
)

_WORDS: Final = (
    "widget", "gadget", "sprocket", "flange", "bracket", "Grüße", "café", "assembly",
    "premium", "compact", "stainless", "adapter", "for", "with", "heavy-duty", "kit",
    "replacement", "blue", "red", "XL", "pack", "of", "12", "outdoor", "日本語",
)


@dataclass(frozen=True, slots=True)
class Stream:
    """The encoded stream and what a decoder should find in it."""

    data: bytes
    rows: int
    #: Total messages: RowDescription + rows + CommandComplete + ReadyForQuery.
    messages: int
    #: The values of a few rows, by row index, to check a decoder's output.
    samples: dict[int, tuple[bytes | None, ...]]


def _row_values(rng: random.Random, index: int) -> tuple[bytes | None, ...]:
    # Name lengths vary from a word to a long description; a few are very long.
    words = rng.choices(_WORDS, k=rng.choice((1, 2, 3, 4, 6, 10, 25)))
    name: bytes | None = " ".join(words).encode()
    price: bytes | None = repr(round(rng.uniform(0.5, 10_000.0), rng.randint(0, 4))).encode()
    created: bytes | None = (
        f"20{rng.randint(10, 24):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        f".{rng.randint(0, 999_999):06d}"
    ).encode()
    active: bytes | None = b"t" if rng.random() < 0.7 else b"f"
    # Some NULLs, in every nullable column.
    if rng.random() < 0.05:
        name = None
    if rng.random() < 0.10:
        price = None
    if rng.random() < 0.03:
        created = None
    if rng.random() < 0.08:
        active = None
    return (str(index + 1).encode(), name, price, created, active)


def build_stream(rows: int = DEFAULT_ROWS, seed: int = SEED) -> Stream:
    """The bytes a server sends for :data:`QUERY` returning ``rows`` rows."""
    rng = random.Random(seed)
    sample_at = {0, 1, rows // 2, rows - 1} if rows else set()
    samples: dict[int, tuple[bytes | None, ...]] = {}
    parts = [pw.RowDescription(fields=COLUMNS).encode()]
    append = parts.append
    for index in range(rows):
        values = _row_values(rng, index)
        if index in sample_at:
            samples[index] = values
        append(pw.DataRow(values=values).encode())
    append(pw.CommandComplete(tag=f"SELECT {rows}").encode())
    append(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE).encode())
    return Stream(data=b"".join(parts), rows=rows, messages=rows + 3, samples=samples)


def chunks(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    """``data`` cut into ``size``-byte pieces, as successive socket reads would
    deliver it (messages straddle the cuts)."""
    return [data[start : start + size] for start in range(0, len(data), size)]


def login_bytes() -> bytes:
    """What a trusting server sends after the StartupMessage: AuthenticationOk,
    the usual ParameterStatus messages, BackendKeyData and ReadyForQuery."""
    parameters = {
        "client_encoding": "UTF8",
        "server_encoding": "UTF8",
        "server_version": "16.3",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
    }
    parts = [pw.AuthenticationOk().encode()]
    parts += [pw.ParameterStatus(name=k, value=v).encode() for k, v in parameters.items()]
    parts.append(pw.BackendKeyData(process_id=4242, secret_key=b"\x01\x02\x03\x04").encode())
    parts.append(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE).encode())
    return b"".join(parts)

