"""Build the optional C accelerator; pgwire works without it (pure Python).

All metadata lives in pyproject.toml. The extension is `optional`: when no C
compiler or Python headers are available the build continues without it, and
pgwire falls back to its pure-Python decoder. Set PGWIRE_PURE_PYTHON=1 to
skip the build (and, at run time, to ignore a built accelerator).
"""

import os

from setuptools import Extension, setup

extensions = []
if not os.environ.get("PGWIRE_PURE_PYTHON"):
    extensions.append(
        Extension(
            "pgwire.protocol._speedups",
            ["pgwire/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"] if os.name != "nt" else [],
        )
    )

setup(ext_modules=extensions)
