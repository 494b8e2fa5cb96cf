"""``python -m pgwire``: the same as the ``pgwire`` command (see :mod:`pgwire.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
