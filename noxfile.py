"""Nox sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``.

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
def lint(session: nox.Session) -> None:
    """Check the code with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "pgwire", "tests")


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


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py script."""
    scripts = sorted(Path("benchmarks").glob("bench_*.py"))
    if not scripts:
        session.error("no benchmarks/bench_*.py scripts found")
    session.install("-e", ".[dev]")
    for script in scripts:
        # Extra arguments are the stream benchmarks' (--rows, --repeat, ...);
        # bench_proxy.py takes its own and runs with its defaults here.
        extra = () if script.name == "bench_proxy.py" else session.posargs
        session.run("python", str(script), *extra)
