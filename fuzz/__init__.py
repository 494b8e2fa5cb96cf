"""Coverage-guided fuzz harnesses (atheris) for pgwire's parsers and proxy session.

Each module here exposes ``one_input(data: bytes) -> None``: it decodes the
input into a scenario, runs it, and raises only when pgwire did something it
must not (an exception other than its documented protocol errors, or a broken
invariant). The same function serves atheris (``python fuzz/frontend.py``)
and plain replay (``tests/fuzz``). See ``fuzz/README.md``.
"""

#: Every harness, by name: the module ``fuzz.<name>`` and ``fuzz/corpus/<name>/``.
HARNESSES = (
    "frontend",
    "backend",
    "scram_client",
    "scram_server",
    "startup",
    "session",
    "session_pool",
)
