"""Helpers for testing code built on pgwire.

`pgwire.testing.cluster` starts a throwaway PostgreSQL server for integration tests.
Each module here is imported on its own, so using one never pulls in another's
dependencies.
"""
