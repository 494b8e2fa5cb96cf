"""pgwire — PostgreSQL wire protocol for proxies, poolers and fake servers.

The protocol core is re-exported here: ``pgwire.Frontend`` (you are the
client), ``pgwire.Backend`` (you are the server), every message class, and the
errors. Subpackages hold the rest.
"""

from . import protocol
from .protocol import *  # noqa: F403

__all__ = protocol.__all__
__version__ = "0.1.0"
