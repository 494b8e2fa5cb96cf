"""One shared copy of equal frozensets.

A proxy makes the same few sets for every session (which message types each
side decodes, where its walks stop): interned, sessions share one object
instead of holding copies of a few hundred bytes each.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

_T = TypeVar("_T")

_SETS: dict[frozenset[Any], frozenset[Any]] = {}
#: Bounded, in case a caller makes many different sets: past it they are not kept.
_LIMIT: Final = 256


def shared(values: frozenset[_T]) -> frozenset[_T]:
    """The interned frozenset equal to ``values`` (``values`` itself the first time)."""
    found = _SETS.get(values)
    if found is not None:
        return found
    if len(_SETS) < _LIMIT:
        _SETS[values] = values
    return values
