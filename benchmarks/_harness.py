"""What the benchmark scripts share: their command line, the best-of-N driver, the report.

A script reads its options with :func:`parse_options`, builds its runners
(each takes the chunks and returns ``(outcome, seconds)``, where the outcome is
whatever the script checks a run by: a message count, or a count and the
bytes framed), hands them to :func:`measure`, and prints the environment and
one rate line per variant with :func:`print_environment` and
:func:`print_rates`.

The timed loops themselves stay in the scripts, one per variant: a loop shared
by two variants gives them one call site, which CPython's specialisation then
serves worse (about 2% slower on the framing benchmark), so the numbers would
move.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from _stream import CHUNK_SIZE, DEFAULT_ROWS

Outcome = TypeVar("Outcome")

#: A timed run: takes the chunks, returns (what the script checks, seconds).
Runner: TypeAlias = Callable[[list[bytes]], tuple[Outcome, float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The command line every benchmark takes, already checked to be sensible."""

    rows: int
    repeat: int
    chunk_size: int
    disable_gc: bool
    profile: bool


def parse_options(doc: str, argv: list[str] | None, *, fed_by: str, profiled: str) -> Options:
    """Parse the shared command line; exit with a usage error on a count below one.

    ``doc`` is the script's docstring (its first paragraph becomes the
    description); ``fed_by`` names the call each chunk goes to and
    ``profiled`` the run ``--profile`` profiles, for the help text.
    """
    parser = argparse.ArgumentParser(description=doc.partition("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"DataRows in the stream (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per variant; the best is reported (default 5)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                        help=f"bytes per {fed_by} (default {CHUNK_SIZE})")
    parser.add_argument("--disable-gc", action="store_true",
                        help="turn the cyclic garbage collector off during timed runs")
    parser.add_argument("--profile", action="store_true",
                        help=f"after timing, profile {profiled} with cProfile")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.chunk_size < 1:
        parser.error("--rows, --repeat and --chunk-size must be positive")
    return Options(rows=args.rows, repeat=args.repeat, chunk_size=args.chunk_size,
                   disable_gc=args.disable_gc, profile=args.profile)


def measure(runners: Mapping[str, Runner[Outcome]], pieces: list[bytes], repeat: int,
            disable_gc: bool, check: Callable[[str, Outcome], None]) -> dict[str, float]:
    """Best time per variant over ``repeat`` rounds.

    Variants take turns within each round, so drift in the machine hits all
    alike. Every run starts after a full collection (with the collector off
    during the run if ``disable_gc``), and ``check(name, outcome)`` vets each
    run's outcome; it is expected to raise (``SystemExit``) on a wrong one.
    """
    best = {name: float("inf") for name in runners}
    for _ in range(repeat):
        for name, runner in runners.items():
            gc.collect()
            if disable_gc:
                gc.disable()
            try:
                outcome, seconds = runner(pieces)
            finally:
                gc.enable()
            check(name, outcome)
            best[name] = min(best[name], seconds)
    return best


def print_environment(versions: str, options: Options) -> None:
    """Print the line that says what was measured with: Python, the libraries
    (``versions``, as the script words them), the run count and the gc setting."""
    print(f"Python {platform.python_version()} ({sys.implementation.name}), "
          f"{versions}; best of {options.repeat} runs; "
          f"gc {'DISABLED' if options.disable_gc else 'enabled'} during timed runs")


def print_rates(labels: Mapping[str, str], best: Mapping[str, float], messages: int,
                megabytes: float, width: int) -> None:
    """Print one line per variant, in the order of ``labels``: messages and
    megabytes per second and the best time, the label padded to ``width``."""
    for key, label in labels.items():
        seconds = best[key]
        print(f"  {label:<{width}} {messages / seconds:>13,.0f} msg/s "
              f"{megabytes / seconds:>8.1f} MB/s {seconds:>8.3f} s")


def profile(runner: Runner[Outcome], pieces: list[bytes]) -> None:
    """One untimed run under cProfile, the 15 functions with the most own time
    (cProfile inflates small calls: read the split between functions, not the
    totals)."""
    profiler = cProfile.Profile()
    profiler.runcall(runner, pieces)
    print()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
