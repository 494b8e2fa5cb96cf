"""The hash chain of a JSON Lines audit file, and its verification.

Each line is one JSON object: the record's fields plus

- ``seq``: 1 for the file's first line, then one more per line;
- ``prev``: the ``hash`` of the line before (64 zeros on the first line);
- ``hash``: SHA-256 (or HMAC-SHA-256 with a key) of the line's *canonical
  JSON* without ``hash``.

Canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``: keys sorted, no spaces, only ASCII (everything else
``\\u``-escaped), so a line has exactly one correct spelling and its text is
checked too, not only its parsed value. Changing, removing, adding or moving
any line breaks either its own hash, the next line's ``prev``, or ``seq``.

Two limits, stated plainly: cutting lines off the *end* leaves a valid,
shorter chain, detectable only against an anchor kept elsewhere (the last
``seq`` and ``hash``, which the sink logs when it closes); and without a key
anyone who can write the file can recompute every hash after an edit. With
a key (HMAC), they cannot without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from json.encoder import encode_basestring_ascii
from operator import attrgetter, itemgetter
from typing import Any, Final

from ._records import AuditRecord, DisconnectRecord, Fact, format_time

__all__ = [
    "GENESIS",
    "ChainError",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "read_chain_tail",
    "seal",
    "seal_records",
    "verify_chain",
]

#: The ``prev`` of a file's first line.
GENESIS: Final = "0" * 64
_CHAIN_FIELDS: Final = ("seq", "prev", "hash")
_TAIL_CHUNK: Final = 65536


class ChainError(Exception):
    """An audit file cannot be continued (its last line is broken or does not verify)."""


def canonical_json(data: Mapping[str, Any]) -> str:
    """The one spelling of ``data`` that hashes are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def chain_hash(body: str, key: bytes | None = None) -> str:
    """Hex SHA-256 of ``body`` (ASCII canonical JSON), or HMAC-SHA-256 with ``key``."""
    data = body.encode("ascii")
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


def seal(record: Mapping[str, Any], seq: int, prev: str, key: bytes | None = None
         ) -> tuple[str, str]:
    """The chained line for ``record`` (with its newline) and its hash."""
    for name in _CHAIN_FIELDS:
        if name in record:
            raise ValueError(f"an audit record may not have a field named {name!r}")
    body = dict(record)
    body["seq"] = seq
    body["prev"] = prev
    digest = chain_hash(canonical_json(body), key)
    body["hash"] = digest
    return canonical_json(body) + "\n", digest


# -- writing records fast ------------------------------------------------------------------
#
# seal(record.as_dict(), ...) builds two dicts per record and runs json.dumps
# with sort_keys over them twice. A record class has a fixed set of keys, so
# its canonical line is a fixed template: the keys in sorted order with a
# slot for each value. seal_records fills those templates, encoding each value
# the way json.dumps(..., ensure_ascii=True, allow_nan=False) does (strings
# with the same C escaper; anything but str, int, float, bool, None and
# tuples of them goes to json.dumps itself), and tests/audit check that its
# lines are byte for byte those of seal().


def _encode_float(value: float) -> str:
    if math.isfinite(value):
        return float.__repr__(value)
    raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")


def _encode_tuple(values: tuple[Any, ...]) -> str:
    return "[" + ",".join([_encode_value(value) for value in values]) + "]"


def _encode_other(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def _encode_null(_: None) -> str:
    return "null"


def _encode_bool(value: bool) -> str:
    return "true" if value else "false"


#: The canonical spelling of a value, by its exact type.
_ENCODERS: Final[dict[type, Callable[[Any], str]]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    type(None): _encode_null,
    bool: _encode_bool,
    float: _encode_float,
    tuple: _encode_tuple,
}


def _encode_value(value: Any) -> str:
    return _ENCODERS.get(type(value), _encode_other)(value)


class _Layout:
    """One record class's canonical line, as two templates around ``"hash"``.

    The sorted keys split at ``"hash"``: the ``head`` template holds the
    keys before it (``event`` and fields), the ``tail`` the keys after it
    (fields, ``prev`` and ``seq``); neither is ever empty. The body that is
    hashed is ``head`` and ``tail`` joined by a comma; the line puts the hash
    between them. Both are filled from the encoded values in field order
    followed by ``prev`` and ``seq``.
    """

    __slots__ = ("head", "head_values", "tail", "tail_values", "values")

    def __init__(self, cls: type[AuditRecord]) -> None:
        names = [f.name for f in fields(cls)]
        for name in _CHAIN_FIELDS:
            if name in names:
                raise ValueError(f"an audit record may not have a field named {name!r}")
        head_names = sorted(n for n in [*names, "event"] if n < "hash")
        tail_names = sorted(n for n in [*names, "prev", "seq"] if n > "hash")
        self.head = ",".join(self._slot(cls, name) for name in head_names)
        self.tail = ",".join(self._slot(cls, name) for name in tail_names)
        #: A record's values in field order (a fact's come from fact_values).
        self.values: Callable[[AuditRecord], tuple[Any, ...]] = _getter(attrgetter, names)
        # From the encoded values (fields, prev, seq), the head's and the tail's.
        order = [*names, "prev", "seq"]
        self.head_values = _getter(itemgetter, [order.index(n) for n in head_names
                                                if n != "event"])
        self.tail_values = _getter(itemgetter, [order.index(n) for n in tail_names])

    @staticmethod
    def _slot(record_class: type[AuditRecord], name: str) -> str:
        key = encode_basestring_ascii(name) + ":"
        if name == "event":
            return (key + encode_basestring_ascii(record_class.event)).replace("%", "%%")
        return key.replace("%", "%%") + "%s"


def _getter(kind: Callable[..., Callable[[Any], Any]], keys: Sequence[Any]
            ) -> Callable[[Any], tuple[Any, ...]]:
    """``attrgetter`` or ``itemgetter`` of ``keys`` that always gives a tuple."""
    if not keys:
        return lambda _: ()
    if len(keys) == 1:
        one = kind(keys[0])
        return lambda source: (one(source),)
    getter: Callable[[Any], tuple[Any, ...]] = kind(*keys)
    return getter


_LAYOUTS: dict[type[AuditRecord], _Layout] = {}
#: A session's fixed fields (a fact's Who), encoded: most of a line, the same
#: in every record of the session, whose facts share one Who tuple. Keyed by
#: identity (equal tuples may spell differently: 1 and True), and holding the
#: tuple so its id is not reused while the entry lives. An entry goes with its
#: session's DisconnectRecord; the cap bounds sessions that end without one.
_WHO_ENCODED: dict[int, tuple[Any, tuple[str, ...]]] = {}
_WHO_ENCODED_MAX: Final = 4096


def _layout(cls: type[AuditRecord]) -> _Layout:
    layout = _LAYOUTS[cls] = _Layout(cls)
    return layout


def _encoded_who(who: Any) -> tuple[str, ...]:
    entry = _WHO_ENCODED.get(id(who))
    if entry is not None and entry[0] is who:
        return entry[1]
    if len(_WHO_ENCODED) >= _WHO_ENCODED_MAX:
        _WHO_ENCODED.clear()
    encoded = tuple([_encode_value(value) for value in who])
    _WHO_ENCODED[id(who)] = (who, encoded)
    return encoded


def seal_records(records: Sequence[AuditRecord | Fact], seq: int, prev: str,
                 key: bytes | None = None) -> tuple[list[str], int, str]:
    """Chain ``records`` after line ``seq`` whose hash is ``prev``: their lines
    (each exactly ``seal(record.as_dict(), ...)[0]``, a fact's that of the record
    it stands for), the last seq and hash."""
    layouts = _LAYOUTS
    encoders = _ENCODERS
    sha256 = hashlib.sha256
    digest_of = hmac.digest
    lines: list[str] = []
    append = lines.append
    for record in records:
        seq += 1
        if isinstance(record, tuple):
            cls, nanoseconds, who, effective_role, application_name, own = record
            layout = layouts.get(cls) or _layout(cls)
            w = _encoded_who(who)
            if cls is DisconnectRecord:
                # The session's last record: its encoding is not needed again.
                _WHO_ENCODED.pop(id(who), None)
            # fact_values(record), encoded: the who part comes encoded already.
            encoded = (encode_basestring_ascii(format_time(nanoseconds)),
                       w[0], w[1], w[2], w[3], w[4],
                       encoders.get(type(effective_role), _encode_other)(effective_role),
                       w[5], w[6],
                       encoders.get(type(application_name), _encode_other)(application_name),
                       *[encoders.get(type(v), _encode_other)(v) for v in own],
                       encode_basestring_ascii(prev), str(seq))
        else:
            layout = layouts.get(type(record)) or _layout(type(record))
            encoded = (*[encoders.get(type(v), _encode_other)(v)
                         for v in layout.values(record)],
                       encode_basestring_ascii(prev), str(seq))
        head = layout.head % layout.head_values(encoded)
        tail = layout.tail % layout.tail_values(encoded)
        data = ("{" + head + "," + tail + "}").encode("ascii")
        prev = sha256(data).hexdigest() if key is None else digest_of(key, data, "sha256").hex()
        append("{" + head + ',"hash":"' + prev + '",' + tail + "}\n")
    return lines, seq, prev


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """What :func:`verify_chain` found.

    ``ok`` with ``records`` lines, ending at ``last_seq`` / ``last_hash``
    (None for an empty file); or not ``ok``, with the first bad line
    (``bad_line``, counted from 1) and ``reason``. ``records``, ``last_seq``
    and ``last_hash`` then describe the intact part before it.
    """

    ok: bool
    records: int
    last_seq: int | None
    last_hash: str | None
    bad_line: int | None = None
    reason: str | None = None


def verify_chain(path: str | os.PathLike[str], key: bytes | str | None = None, *,
                 anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Check every line of a JSON Lines audit file, first to last.

    Detects any edited, deleted, inserted or reordered line, a damaged last
    line, and a file that does not start at the chain's beginning. Lines cut
    off the end are detected only with ``anchor``: a ``(seq, hash)`` pair
    recorded elsewhere (the sink logs one when it closes) that the file must
    still contain. ``key`` is the HMAC key the file was written with, if any.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    expected_seq = 1
    prev = GENESIS
    records = 0
    last_seq: int | None = None
    last_hash: str | None = None
    anchor_seen = False

    def bad(line: int, reason: str) -> VerifyResult:
        return VerifyResult(ok=False, records=records, last_seq=last_seq,
                            last_hash=last_hash, bad_line=line, reason=reason)

    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            problem = _check_line(raw, expected_seq, prev, key_bytes)
            if isinstance(problem, str):
                return bad(number, problem)
            seq, digest = problem
            if anchor is not None and seq == anchor[0]:
                if digest != anchor[1]:
                    return bad(number, f"seq {seq} has hash {digest}, but the anchor says "
                                       f"{anchor[1]}: the file was rewritten from here or "
                                       "before")
                anchor_seen = True
            records += 1
            last_seq, last_hash = seq, digest
            expected_seq, prev = seq + 1, digest
    if anchor is not None and not anchor_seen:
        return bad(records + 1, f"the file ends at seq {last_seq or 0}, before the anchor's "
                                f"seq {anchor[0]}: records were cut off the end")
    return VerifyResult(ok=True, records=records, last_seq=last_seq, last_hash=last_hash)


def _check_line(raw: bytes, expected_seq: int, prev: str, key: bytes | None
                ) -> tuple[int, str] | str:
    """(seq, hash) of a good line, or why it is bad."""
    if not raw.endswith(b"\n"):
        return ("the line is incomplete (no newline at the end): the file was cut, or the "
                "writer stopped in the middle of a line")
    try:
        text = raw[:-1].decode("ascii")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "not a valid line of JSON (edited or damaged)"
    if not isinstance(data, dict):
        return "not a JSON object (edited or damaged)"
    seq, line_prev, digest = data.get("seq"), data.get("prev"), data.pop("hash", None)
    if type(seq) is not int or not isinstance(line_prev, str) or not isinstance(digest, str):
        return "seq, prev or hash is missing or of the wrong type (not an audit line?)"
    data["hash"] = digest
    try:
        if canonical_json(data) != text:
            return ("the line is not in canonical form (spacing, key order, escapes or a "
                    "repeated key changed): it was edited")
    except ValueError:
        return "the line holds a number JSON cannot carry (NaN, Infinity): it was edited"
    if seq != expected_seq:
        return (f"seq is {seq} where {expected_seq} was expected: a record was deleted, "
                "inserted or moved here")
    if line_prev != prev:
        return ("prev does not match the hash of the line before: a record was deleted, "
                "inserted or moved here")
    del data["hash"]
    if not hmac.compare_digest(chain_hash(canonical_json(data), key), digest):
        if key is None:
            return ("the hash does not match the record: it was edited (or the file was "
                    "written with a key: pass it)")
        return "the hash does not match the record: it was edited, or the key is wrong"
    return seq, digest


def read_chain_tail(path: str | os.PathLike[str], key: bytes | None = None
                    ) -> tuple[int, str]:
    """The ``(seq, hash)`` a new line appended to ``path`` must follow.

    ``(0, GENESIS)`` for a missing or empty file. Only the last line is
    checked (its own hash, with ``key``); run :func:`verify_chain` for the
    whole file. Raises :class:`ChainError` when the last line is broken.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0, GENESIS
    try:
        return _tail_of(fd, os.fstat(fd).st_size, key, os.fspath(path))
    finally:
        os.close(fd)


def _tail_of(fd: int, size: int, key: bytes | None, name: str) -> tuple[int, str]:
    if size == 0:
        return 0, GENESIS
    last = os.pread(fd, 1, size - 1)
    if last != b"\n":
        raise ChainError(f"{name} ends in an incomplete line (the writer stopped mid-line?): "
                         "run `pgwire audit verify` on it, then move it aside or cut the "
                         "partial line before writing to it again")
    # The bytes before the final newline, read backwards until the previous newline.
    start = size - 1
    body = b""
    while start > 0:
        step = min(_TAIL_CHUNK, start)
        start -= step
        body = os.pread(fd, step, start) + body
        newline = body.rfind(b"\n")
        if newline >= 0:
            body = body[newline + 1:]
            break
    line = body + b"\n"
    data: object
    try:
        data = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or type(data.get("seq")) is not int:
        raise ChainError(f"the last line of {name} is not an audit record: run "
                         "`pgwire audit verify` on it")
    checked = _check_line(line, data["seq"], str(data.get("prev")), key)
    if isinstance(checked, str):
        raise ChainError(f"the last line of {name} does not verify ({checked}): run "
                         "`pgwire audit verify` on it")
    return checked
