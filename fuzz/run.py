"""Run the fuzz harnesses under atheris, one process each, and report what they reached.

    python -m fuzz.run                       # every harness, 20,000 inputs each
    python -m fuzz.run --runs 200000 frontend session
    python -m fuzz.run --seconds 600 --crash-dir crashes/

Each harness runs in its own process with pgwire instrumented, starting from
a scratch copy of its seed corpus (``fuzz/corpus/<harness>/``; the copy
grows, the repository's corpus does not; ``--keep-corpus DIR`` keeps it), for ``--runs`` inputs or
``--seconds``. The table lists, per harness: the inputs run, libFuzzer's
final ``cov`` (coverage edges) and ``ft`` (features), the corpus it ended
with, and crashes. A crash's input is written to ``--crash-dir`` (a new
temporary directory unless given) and the exit status is 1; replay it with
``python -m fuzz.replay HARNESS FILE``. Exit status 2: atheris is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import HARNESSES

__all__ = ["Result", "main", "run_harness"]

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
CORPUS = FUZZ_DIR / "corpus"
DEFAULT_RUNS = 20000
DEFAULT_MAX_LEN = 4096
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\d+)(\w*)")
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")


@dataclass
class Result:
    """What one harness's run reached."""

    harness: str
    inputs: int
    cov: int
    ft: int
    corpus_files: int
    corpus_bytes: int
    crashes: list[str]
    seconds: float
    exit_status: int


def _size(number: int, unit: str) -> int:
    return number * {"": 1, "b": 1, "Kb": 1024, "Mb": 1024 * 1024}.get(unit, 1)


def _parse(harness: str, log: str, crashes: list[str], seconds: float,
           status: int) -> Result:
    cov = ft = files = size = inputs = 0
    for match in _STATUS.finditer(log):
        inputs = int(match.group(1))
        cov, ft, files = int(match.group(2)), int(match.group(3)), int(match.group(4))
        size = _size(int(match.group(5)), match.group(6))
    executed = _EXECUTED.findall(log)
    if executed:
        inputs = int(executed[-1])
    return Result(harness, inputs, cov, ft, files, size, crashes, round(seconds, 1), status)


def run_harness(harness: str, *, runs: int | None, seconds: int | None, max_len: int,
                crash_dir: Path, work_dir: Path, log_dir: Path | None = None) -> Result:
    """Fuzz one harness in a child process; its :class:`Result`."""
    corpus = work_dir / harness
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / harness
    if seeds.is_dir():
        for seed in seeds.iterdir():
            if seed.is_file():
                shutil.copy(seed, corpus / seed.name)
    prefix = crash_dir / f"{harness}-"
    flags = [f"-max_len={max_len}", f"-artifact_prefix={prefix}", "-timeout=20",
             "-rss_limit_mb=2048", "-print_final_stats=1", "-detect_leaks=0"]
    if runs is not None:
        flags.append(f"-runs={runs}")
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    command = [sys.executable, "-m", "fuzz.run", "--worker", harness, *flags, str(corpus)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          errors="replace", check=False)
    elapsed = time.monotonic() - started
    log = done.stdout + done.stderr
    if log_dir is not None:
        (log_dir / f"{harness}.log").write_text(log)
    crashes = sorted(str(p) for p in crash_dir.glob(f"{harness}-*"))
    result = _parse(harness, log, crashes, elapsed, done.returncode)
    if done.returncode != 0 and not crashes:
        tail = "\n".join(log.splitlines()[-30:])
        print(f"{harness}: the fuzzer exited with {done.returncode}:\n{tail}", file=sys.stderr)
    return result


def _worker(harness: str, flags: list[str]) -> None:
    """Inside the child: instrument pgwire, import the harness, fuzz."""
    import atheris  # type: ignore[import-untyped]  # noqa: PLC0415 - the parent must run without it

    with atheris.instrument_imports(include=["pgwire", "fuzz"]):
        module = importlib.import_module(f"fuzz.{harness}")
    atheris.Setup([sys.argv[0], *flags], module.one_input)
    atheris.Fuzz()


def _table(results: list[Result]) -> str:
    header = ("harness", "inputs", "cov", "ft", "corpus", "crashes", "seconds")
    rows = [header] + [
        (r.harness, str(r.inputs), str(r.cov), str(r.ft),
         f"{r.corpus_files} ({r.corpus_bytes} B)", str(len(r.crashes)), str(r.seconds))
        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS",
                        help=f"which to run (default: all of {', '.join(HARNESSES)})")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"inputs per harness (default {DEFAULT_RUNS}, or no limit "
                        "with --seconds)")
    parser.add_argument("--seconds", type=int, default=None,
                        help="stop each harness after this many seconds")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                        help="largest input libFuzzer makes (bytes)")
    parser.add_argument("--crash-dir", type=Path, default=None,
                        help="where crash inputs go (default: a new temporary directory)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep each harness's libFuzzer output here")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results as JSON to this file")
    parser.add_argument("--keep-corpus", type=Path, default=None,
                        help="grow the corpora in this directory (one folder per harness) "
                        "and keep them, instead of in a temporary copy")
    args = parser.parse_args(argv)
    unknown = [name for name in args.harnesses if name not in HARNESSES]
    if unknown:
        parser.error(f"no harness {', '.join(unknown)}; choose from {', '.join(HARNESSES)}")
    try:
        import atheris  # noqa: F401, PLC0415
    except ImportError:
        print("atheris is not installed: pip install 'pgwire[fuzz]' (Linux)", file=sys.stderr)
        return 2
    runs = args.runs if args.runs is not None or args.seconds is not None else DEFAULT_RUNS
    crash_dir = args.crash_dir or Path(tempfile.mkdtemp(prefix="pgwire-fuzz-crashes-"))
    crash_dir.mkdir(parents=True, exist_ok=True)
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        work = args.keep_corpus or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="pgwire-fuzz-corpus-")))
        for harness in args.harnesses or HARNESSES:
            print(f"fuzzing {harness} ...", file=sys.stderr, flush=True)
            results.append(run_harness(harness, runs=runs, seconds=args.seconds,
                                       max_len=args.max_len, crash_dir=crash_dir,
                                       work_dir=work, log_dir=args.log_dir))
    print(_table(results))
    crashed = [r for r in results if r.crashes or r.exit_status != 0]
    if crashed:
        print(f"\ncrash inputs in {crash_dir}:")
        for result in crashed:
            for crash in result.crashes:
                print(f"  python -m fuzz.replay {result.harness} {crash}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
