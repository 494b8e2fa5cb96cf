"""Adapters run the sans-IO proxy on an I/O library: they move bytes, open
sockets and run timers, and nothing else.

- :mod:`pgwire.adapters.asyncio` (uvloop when installed)
- :mod:`pgwire.adapters.trio` (needs the ``trio`` extra)
- :mod:`pgwire.adapters.blocking` (threads and plain sockets)
"""

from ._base import SessionDriver, parse_address, run_job

__all__ = ["SessionDriver", "parse_address", "run_job"]
