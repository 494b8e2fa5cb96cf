"""The C accelerator and the pure-Python row decoder agree on every input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.protocol import _framing, _messages

from .helpers import ready_frontend

speedups = pytest.importorskip(
    "pgwire.protocol._speedups",
    reason="the C accelerator is not built here (no compiler); the pure-Python path is tested",
)

python_decoder = _messages._decode_data_rows_py
c_decoder = speedups.decode_data_rows


def rows_stream(rows: list[tuple[bytes | None, ...]]) -> bytes:
    return b"".join(pw.DataRow(values=row).encode() for row in rows)


values = st.one_of(st.none(), st.binary(max_size=40))
row_lists = st.lists(st.lists(values, max_size=6).map(tuple), max_size=20)


Decoded = tuple[list[tuple[bytes | None, ...]], int]


def both(buf: bytes, end: int, limit: int, columns: int, max_rows: int) -> tuple[Decoded, Decoded]:
    pos = 0
    py_rows, py_pos = python_decoder(buf, pos, end, limit, columns, max_rows, pw.DataRow)
    c_rows, c_pos = c_decoder(buf, pos, end, limit, columns, max_rows, pw.DataRow)
    assert all(type(row) is pw.DataRow for row in c_rows)
    return ([r.values for r in py_rows], py_pos), ([r.values for r in c_rows], c_pos)


@given(row_lists, st.data())
def test_valid_runs_decode_identically(
    rows: list[tuple[bytes | None, ...]], data: st.DataObject
) -> None:
    stream = rows_stream(rows) + pw.CommandComplete(tag="SELECT").encode()
    end = data.draw(st.integers(0, len(stream)))
    columns = data.draw(st.sampled_from([-1, len(rows[0]) if rows else 0, 3]))
    limit = data.draw(st.sampled_from([0, 10, 100, 1 << 30]))
    max_rows = data.draw(st.integers(0, 25))
    python_result, c_result = both(stream, end, limit, columns, max_rows)
    assert python_result == c_result


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(-1, 4), st.integers(0, 10))
def test_arbitrary_bytes_decode_identically(buf: bytes, columns: int, max_rows: int) -> None:
    python_result, c_result = both(buf, len(buf), 1 << 20, columns, max_rows)
    assert python_result == c_result


@given(row_lists)
def test_every_mutation_decodes_identically(rows: list[tuple[bytes | None, ...]]) -> None:
    stream = bytearray(rows_stream(rows))
    for index in range(0, len(stream), 7):
        mutated = bytearray(stream)
        mutated[index] ^= 0xA5
        python_result, c_result = both(bytes(mutated), len(mutated), 1 << 20, -1, 50)
        assert python_result == c_result


def test_c_decoder_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        c_decoder(bytearray(b"D"), 0, 1, 10, -1, 1, pw.DataRow)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c_decoder(b"", 0, 0, 10, -1, 1, "DataRow")  # type: ignore[arg-type]
    # An end past the buffer is clamped, not read out of bounds.
    stream = rows_stream([(b"a",)])
    assert c_decoder(stream, 0, 10**9, 10, -1, 5, pw.DataRow)[1] == len(stream)


def test_frontend_uses_the_pure_python_path_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Frontend gives the same events through either decoder."""
    stream = (
        pw.RowDescription(fields=(pw.FieldDescription(name="a"), pw.FieldDescription(name="b")))
        .encode()
        + rows_stream([(b"1", None), (b"", b"x" * 1000)] * 50)
        + pw.CommandComplete(tag="SELECT 100").encode()
        + pw.ReadyForQuery().encode()
    )
    results = []
    for decoder in (c_decoder, python_decoder):
        monkeypatch.setattr(_framing, "decode_data_rows", decoder)
        frontend = ready_frontend()
        frontend.send(pw.Query(query="select"))
        events = []
        for start in range(0, len(stream), 333):
            frontend.receive_data(stream[start : start + 333])
            while (event := frontend.next_event()) is not pw.NEED_DATA:
                events.append(event)
        results.append(events)
    assert results[0] == results[1]
    assert len(results[0]) == 103


def test_pure_python_switch_disables_the_accelerator() -> None:
    code = "import pgwire.protocol._messages as m; print(m.SPEEDUPS)"
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PGWIRE_PURE_PYTHON": "1"}, check=True)
    assert forced.stdout.strip() == "False"
    # Without the switch, whatever the environment the suite itself runs in.
    environ = {k: v for k, v in os.environ.items() if k != "PGWIRE_PURE_PYTHON"}
    normal = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environ, check=True)
    assert normal.stdout.strip() == "True"
