"""Shared command line of the scripts that generate pages in docs/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(
    target: Path, render: Callable[[], str], script: str, argv: list[str] | None = None
) -> int:
    """Write ``render()`` to ``target``, or with ``--check`` exit 1 if it differs."""
    parser = argparse.ArgumentParser(description=f"Regenerate {target.name}.")
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0
