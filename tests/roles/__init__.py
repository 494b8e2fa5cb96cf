"""Tests of pgwire.roles."""
