"""Replay inputs through a harness without atheris: ``python -m fuzz.replay HARNESS PATH...``.

Each PATH is an input file or a directory of them (a corpus, crash files).
Prints each input that raised, with its traceback; exit status 1 if any did.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import HARNESSES

__all__ = ["load", "main", "replay"]


def load(harness: str) -> Callable[[bytes], None]:
    """The ``one_input`` of harness ``harness``."""
    if harness not in HARNESSES:
        raise ValueError(f"no harness {harness!r}; choose one of {', '.join(HARNESSES)}")
    one_input: Callable[[bytes], None] = importlib.import_module(f"fuzz.{harness}").one_input
    return one_input


def replay(harness: str, paths: list[Path]) -> list[tuple[Path, BaseException]]:
    """Run every input under ``paths`` through ``harness``; the ones that raised."""
    one_input = load(harness)
    failed: list[tuple[Path, BaseException]] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                one_input(file.read_bytes())
            except Exception as exc:
                failed.append((file, exc))
    return failed


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    failed = replay(argv[0], [Path(p) for p in argv[1:]])
    for file, exc in failed:
        print(f"--- {file}")
        traceback.print_exception(exc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
