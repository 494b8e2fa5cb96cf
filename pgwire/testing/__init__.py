"""Helpers for testing code built on pgwire.

- `pgwire.testing.plugin`: the pytest plugin (loaded through its ``pytest11``
  entry point): fixtures ``pgwire_cluster``, ``pgwire_proxy``, ``pgwire_frontend``.
- `pgwire.testing.cluster`: a throwaway PostgreSQL server for integration tests.
- `pgwire.testing.proxy`: a proxy running in a background thread.
- `pgwire.testing.client`: a blocking client that exposes its `pgwire.Frontend`.
- `pgwire.testing.harness`: a proxy session driven by hand, without sockets.
- `pgwire.testing.stateful`: hypothesis state machines for your middleware.
- `pgwire.testing.strategies`: hypothesis strategies for every message.
- `pgwire.testing.pki`: throwaway certificates.

Each module here is imported on its own, so using one never pulls in another's
dependencies.
"""
