"""The pure-Python DataRow run decoder against a plain reference, for every column count.

``_decode_data_rows_py`` has two paths: a loop for rows of any column count
(``columns`` unknown, or over the written-out limit) and, for a known count, a
loop generated for exactly that many columns. Both must behave as the plain
reference below, which decodes each frame with :func:`decode_data_row`: same
rows, same stopping point, on valid runs and on corrupted ones. (The C
accelerator is compared with the same function in ``test_speedups.py``.)
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.protocol._messages import (
    _MAX_UNROLLED_COLUMNS,
    _decode_data_rows_py,
    decode_data_row,
)

CHECKS = settings(max_examples=200, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Decoded = tuple[list[tuple[bytes | None, ...]], int]


def reference(buf: bytes, pos: int, limit: int, columns: int, max_rows: int) -> Decoded:
    """The contract, written plainly: decode frame by frame, stop at the first refusal."""
    rows: list[tuple[bytes | None, ...]] = []
    end = len(buf)
    while len(rows) < max_rows and end - pos >= 5 and buf[pos] == 0x44:
        length = struct.unpack_from("!i", buf, pos + 1)[0]
        frame_end = pos + 1 + length
        if length < 4 or length - 4 > limit or frame_end > end:
            break
        try:
            row = decode_data_row(buf, pos + 5, frame_end)
        except pw.RemoteProtocolError:
            break
        if columns >= 0 and len(row.values) != columns:
            break
        rows.append(row.values)
        pos = frame_end
    return rows, pos


def decoded(buf: bytes, pos: int, limit: int, columns: int, max_rows: int) -> Decoded:
    rows, end = _decode_data_rows_py(buf, pos, len(buf), limit, columns, max_rows, pw.DataRow)
    assert all(type(row) is pw.DataRow for row in rows)
    assert all(type(v) is bytes or v is None for row in rows for v in row.values)
    return [row.values for row in rows], end


def encode(rows: list[tuple[bytes | None, ...]]) -> bytes:
    return b"".join(pw.DataRow(values=row).encode() for row in rows)


values = st.one_of(st.none(), st.binary(max_size=12))
#: Counts around the ends of the written-out range, where the paths change.
counts = st.one_of(st.integers(0, 6), st.sampled_from(
    [_MAX_UNROLLED_COLUMNS - 1, _MAX_UNROLLED_COLUMNS, _MAX_UNROLLED_COLUMNS + 1]))


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, bytes]:
    """A column count and a run of DataRows of (mostly) that count, maybe corrupted."""
    count = draw(counts)
    row = st.lists(values, min_size=count, max_size=count).map(tuple)
    odd_row = st.lists(values, max_size=count + 2).map(tuple)
    rows = draw(st.lists(st.one_of(row, row, row, odd_row), max_size=6))
    stream = bytearray(encode(rows) + pw.CommandComplete(tag="SELECT").encode())
    for _ in range(draw(st.integers(0, 3))):
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        how = draw(st.integers(0, 2))
        if how == 0:
            stream[at] ^= draw(st.integers(1, 255))
        elif how == 1:
            del stream[at]
        else:
            stream[at:at] = draw(st.binary(min_size=1, max_size=4))
    return count, bytes(stream)


@CHECKS
@given(runs(), st.data())
def test_every_path_decodes_as_the_reference(run: tuple[int, bytes], data: st.DataObject) -> None:
    count, stream = run
    columns = data.draw(st.sampled_from([count, count, -1, count + 1, max(count - 1, 0)]))
    limit = data.draw(st.sampled_from([1 << 30, 1 << 30, 0, 8, 40]))
    max_rows = data.draw(st.sampled_from([1024, 0, 1, 3]))
    pos = data.draw(st.integers(0, 3))
    assert decoded(stream, pos, limit, columns, max_rows) == reference(
        stream, pos, limit, columns, max_rows)


@CHECKS
@given(st.integers(1, _MAX_UNROLLED_COLUMNS), st.binary(max_size=60))
def test_junk_after_a_valid_header(count: int, junk: bytes) -> None:
    """Lengths that lie in every way a header with the right count can carry."""
    stream = b"D" + struct.pack("!iH", len(junk) + 6, count) + junk
    for cut in (len(stream), len(stream) + 4):
        buf = stream + b"\xff" * (cut - len(stream))
        assert decoded(buf, 0, 1 << 30, count, 10) == reference(buf, 0, 1 << 30, count, 10)


def test_a_null_run_past_the_buffer_end_is_refused_not_raised() -> None:
    # Two NULLs announced, the frame (and buffer) ends after the first.
    stream = b"D" + struct.pack("!iHi", 10, 2, -1)
    assert decoded(stream, 0, 1 << 30, 2, 10) == ([], 0)
    # The same, three columns, the second length word would lie past the frame.
    stream = b"D" + struct.pack("!iHii", 14, 3, -1, -1)
    assert decoded(stream, 0, 1 << 30, 3, 10) == ([], 0)


def test_lengths_of_minus_two_and_below_are_refused() -> None:
    for bad in (-2, -(1 << 31)):
        for count in (1, 2, 5, _MAX_UNROLLED_COLUMNS + 1):
            values = [struct.pack("!i", 1) + b"x"] * count
            values[count // 2] = struct.pack("!i", bad)
            body = struct.pack("!H", count) + b"".join(values)
            stream = b"D" + struct.pack("!i", len(body) + 4) + body
            for columns in (count, -1):
                assert decoded(stream, 0, 1 << 30, columns, 10) == ([], 0)


def test_a_lying_column_length_allocates_nothing_like_it() -> None:
    """A row whose column claims most of the buffer is refused before slicing."""
    tail = b"\0" * 4_000_000  # later bytes the claim would otherwise reach
    for count in (1, 3, _MAX_UNROLLED_COLUMNS + 3):
        body = struct.pack("!H", count) + struct.pack("!i", 3_900_000) + b"abc"
        body += (struct.pack("!i", 1) + b"x") * (count - 1)
        stream = b"D" + struct.pack("!i", len(body) + 4) + body + tail
        for columns in (count, -1):
            tracemalloc.start()
            try:
                result = decoded(stream, 0, 1 << 30, columns, 10)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert result == ([], 0)
            assert peak < 200_000


def test_end_and_pos_outside_the_buffer_are_clamped() -> None:
    stream = encode([(b"a", None)] * 3)
    rows, end = _decode_data_rows_py(stream, -5, 10**9, 1 << 30, 2, 10, pw.DataRow)
    assert [row.values for row in rows] == [(b"a", None)] * 3
    assert end == len(stream)


def test_rows_are_handed_out_in_batches_of_max_rows() -> None:
    rows = [(str(i).encode(), b"x" * i, None) for i in range(10)]
    stream = encode(rows)
    pos, seen = 0, []
    while True:
        batch, pos = _decode_data_rows_py(stream, pos, len(stream), 1 << 30, 3, 4, pw.DataRow)
        if not batch:
            break
        assert len(batch) <= 4
        seen += [row.values for row in batch]
    assert seen == rows
    assert pos == len(stream)
