"""What the harnesses share: reading a fuzz input, cutting streams, running atheris.

An input is read front to back by :class:`Input`: single control bytes
(which phase, which chunking), length-prefixed pieces, then the rest. Reads
past the end give zeros and empty bytes, so every input, even ``b""``, is a
scenario. Nothing here needs atheris; :func:`fuzz` imports it only when a
harness runs as a program (``python -m fuzz.frontend -runs=1000``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

__all__ = ["Finding", "Input", "chunked", "fuzz", "piece_bytes"]

# Largest chunk, by the low 3 bits of a chunking seed (0 keeps the stream whole).
_CHUNK_LIMITS = (1, 2, 3, 5, 8, 16, 64, 512)


class Finding(AssertionError):
    """pgwire broke an invariant the harness checks (not just an unexpected exception)."""


class Input:
    """A fuzz input read as control bytes, length-prefixed pieces and a tail."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        """The next byte (0 past the end)."""
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def piece(self) -> bytes:
        """The next piece: a 2-byte big-endian length, then that many bytes (fewer at the end)."""
        length = (self.byte() << 8) | self.byte()
        value = self._data[self._pos:self._pos + length]
        self._pos += len(value)
        return value

    def rest(self) -> bytes:
        """Everything not read yet."""
        value = self._data[self._pos:]
        self._pos = len(self._data)
        return value

    @property
    def exhausted(self) -> bool:
        """True once every byte was read."""
        return self._pos >= len(self._data)


def piece_bytes(*pieces: bytes) -> bytes:
    """Pieces encoded as :meth:`Input.piece` reads them (to write seeds)."""
    return b"".join(len(p).to_bytes(2, "big") + p for p in pieces)


def chunked(payload: bytes, seed: int) -> list[bytes]:
    """``payload`` cut into chunks as a socket might deliver it.

    Seed 0 keeps it whole; otherwise chunk sizes are drawn (deterministically
    from the seed) between 1 and a limit picked by the seed's low 3 bits.
    """
    if seed == 0 or not payload:
        return [payload] if payload else []
    rng = random.Random(seed)
    limit = _CHUNK_LIMITS[seed & 7]
    chunks: list[bytes] = []
    position = 0
    while position < len(payload):
        size = rng.randint(1, limit)
        chunks.append(payload[position:position + size])
        position += size
    return chunks


def fuzz(one_input: Callable[[bytes], None]) -> None:
    """Run ``one_input`` under atheris with this process's command line (libFuzzer flags).

    Every Python function loaded so far is instrumented, pgwire included
    (``fuzz/run.py`` instruments pgwire alone, which starts faster).
    """
    import atheris  # type: ignore[import-untyped]  # noqa: PLC0415 - only when fuzzing

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
