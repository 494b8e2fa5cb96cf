"""Nox sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench`` (every
benchmark), one per benchmark script (``nox -s bench_proxy``; ``nox -l`` lists them), and
the reliability runs ``faults``, ``soak`` and ``fuzz`` (docs/reliability.md).

The integration tests start their own PostgreSQL from the server binaries they find;
``./run tests`` also installs those when missing.
"""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """Inject faults through a real proxy on every adapter (the ``fault`` marker)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "fault", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The long load runs: 10-minute soak, idle plus busy, connection storm (``soak``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "soak", "-n", "0", "-s", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing (atheris) of every harness for a bounded number of inputs.

    ``nox -s fuzz -- --runs 100000`` or ``nox -s fuzz -- --seconds 600 session``; see
    fuzz/README.md. The pool harness borrows the pool tests' rig, hence the dev extra.
    """
    session.install("-e", ".[dev,fuzz]")
    session.run("python", "-m", "fuzz.run", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check the code with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "pgwire", "tests", "reliability", "fuzz")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "pgwire")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors (into site/, or a given directory)."""
    session.install("-e", ".[docs]")
    site = session.posargs[0] if session.posargs else "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", site,
                env={"NO_MKDOCS_2_WARNING": "1"})


#: One session per benchmark script (``nox -s bench_proxy -- --seconds 5``): each
#: takes its own options after ``--``.
BENCHMARKS = sorted(path.stem for path in Path("benchmarks").glob("bench_*.py"))


def _benchmark_session(script: str) -> None:
    def run(session: nox.Session) -> None:
        session.install("-e", ".[dev]")
        session.run("python", f"benchmarks/{script}.py", *session.posargs)

    run.__doc__ = f"Run benchmarks/{script}.py; arguments after -- go to it."
    nox.session(name=script)(run)


for _script in BENCHMARKS:
    _benchmark_session(_script)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py script with its defaults."""
    if not BENCHMARKS:
        session.error("no benchmarks/bench_*.py scripts found")
    session.install("-e", ".[dev]")
    for script in BENCHMARKS:
        session.run("python", f"benchmarks/{script}.py")
