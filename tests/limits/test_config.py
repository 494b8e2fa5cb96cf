"""Every limit has a documented default, and a bad value is refused with a clear error,
both in ProxyConfig and in pgwire.toml (where the error names the key)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pgwire.audit import AuditQueue
from pgwire.middleware.audit import Audit
from pgwire.proxy import ProxyConfig
from pgwire.proxy.config_file import ConfigError, parse_config

UPSTREAM = ("127.0.0.1", 5432)
MiB = 1 << 20

#: The defaults docs/proxy.md states, by field.
DEFAULTS: dict[str, Any] = {
    "max_clients": 1000,
    "max_message_size": 64 * MiB,
    "max_pending_jobs": 64,
    "max_pipeline": 10_000,
    "login_timeout": 60.0,
    "connect_timeout": 10.0,
    "idle_timeout": None,
    "idle_in_transaction_timeout": None,
    "upstream_read_timeout": None,
    "shutdown_timeout": 30.0,
}


def test_proxy_config_defaults_are_the_documented_ones() -> None:
    config = ProxyConfig(upstream=UPSTREAM)
    assert {name: getattr(config, name) for name in DEFAULTS} == DEFAULTS


def test_an_empty_limits_table_gives_the_same_defaults() -> None:
    config = parse_config({"upstream": "127.0.0.1:5432", "limits": {}}).config
    assert {name: getattr(config, name) for name in DEFAULTS} == DEFAULTS


def test_the_docs_list_every_limit_key() -> None:
    from pathlib import Path  # noqa: PLC0415

    from pgwire.proxy.config_file import KNOWN_KEYS  # noqa: PLC0415

    text = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text()
    for key in KNOWN_KEYS["limits"]:
        assert f"`limits.{key}`" in text, key


def test_limits_from_the_file_reach_the_config() -> None:
    limits = {"max_clients": 7, "max_message_size": 4096, "max_pending_jobs": 3,
              "max_pipeline": 5, "login_timeout": 1.5, "connect_timeout": 2,
              "idle_timeout": 3, "idle_in_transaction_timeout": 4,
              "upstream_read_timeout": 0.25, "shutdown_timeout": 0}
    config = parse_config({"upstream": "127.0.0.1:5432", "limits": limits}).config
    assert {name: getattr(config, name) for name in limits} == limits


def test_zero_turns_the_optional_timeouts_off() -> None:
    limits = {"idle_timeout": 0, "idle_in_transaction_timeout": 0, "upstream_read_timeout": 0}
    config = parse_config({"upstream": "127.0.0.1:5432", "limits": limits}).config
    assert (config.idle_timeout, config.idle_in_transaction_timeout,
            config.upstream_read_timeout) == (None, None, None)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("max_clients", 0, "max_clients must be at least 1"),
    ("max_message_size", 0, "max_message_size must be 1.."),
    ("max_message_size", 1 << 30, "max_message_size must be 1.."),
    ("max_pending_jobs", 0, "max_pending_jobs must be at least 1"),
    ("max_pipeline", 0, "max_pipeline must be at least 1"),
    ("login_timeout", 0, "login_timeout must be a positive, finite number of seconds"),
    ("connect_timeout", -1, "connect_timeout must be a positive"),
    ("idle_timeout", math.inf, "idle_timeout must be a positive, finite"),
    ("idle_in_transaction_timeout", math.nan, "idle_in_transaction_timeout must be"),
    ("upstream_read_timeout", 0, "upstream_read_timeout must be a positive"),
    ("upstream_read_timeout", math.inf, "upstream_read_timeout must be a positive, finite"),
    ("shutdown_timeout", -1, "shutdown_timeout must be a finite number of seconds >= 0"),
    ("shutdown_timeout", math.inf, "shutdown_timeout must be a finite"),
])
def test_proxy_config_refuses_a_bad_limit(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace(".", r"\.").replace("(", r"\(")):
        ProxyConfig(upstream=UPSTREAM, **{field: value})  # type: ignore[arg-type]


def test_the_boundaries_themselves_are_accepted() -> None:
    config = ProxyConfig(upstream=UPSTREAM, max_clients=1, max_message_size=1,
                         max_pipeline=1, max_pending_jobs=1, shutdown_timeout=0,
                         upstream_read_timeout=0.001)
    assert (config.max_clients, config.max_message_size, config.max_pipeline) == (1, 1, 1)
    assert ProxyConfig(upstream=UPSTREAM, max_message_size=(1 << 30) - 5).max_message_size
    assert ProxyConfig(upstream=UPSTREAM, max_message_size=None).max_message_size is None


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_clients", 0, "a whole number of at least 1"),
    ("max_pipeline", 0, "a whole number of at least 1"),
    ("max_pipeline", 2.5, "a whole number of at least 1"),
    ("max_pipeline", True, "a whole number of at least 1"),
    ("max_message_size", 1 << 30, "a whole number from 1 to 1073741819"),
    ("login_timeout", 0, "a positive number of seconds"),
    ("login_timeout", "abc", "a positive number of seconds"),
    ("login_timeout", math.inf, "a positive number of seconds"),
    ("upstream_read_timeout", -1, "a number of seconds (0 turns it off)"),
    ("upstream_read_timeout", math.inf, "a number of seconds (0 turns it off)"),
    ("upstream_read_timeout", math.nan, "a number of seconds (0 turns it off)"),
    ("idle_timeout", "5s", "a number of seconds (0 turns it off)"),
    ("shutdown_timeout", math.inf, "a number of seconds, 0 or more"),
])
def test_the_file_refuses_a_bad_limit_naming_the_key(key: str, value: object,
                                                    expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"upstream": "127.0.0.1:5432", "limits": {key: value}},
                     source="pgwire.toml")
    assert raised.value.key == f"limits.{key}"
    assert expected in str(raised.value)
    assert str(raised.value).startswith(f"pgwire.toml: limits.{key}: expected")


def test_a_misspelt_limit_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="max_pipeline"):
        parse_config({"upstream": "127.0.0.1:5432", "limits": {"max_pipelines": 5}})


# -- the audit queue ------------------------------------------------------------------


def test_the_audit_queue_limits_are_settings_of_the_middleware_in_the_file() -> None:
    proxy_file = parse_config({"upstream": "127.0.0.1:5432", "middleware": [
        {"class": "pgwire.middleware.audit:Audit", "sink": {"type": "logging"}, "queue_size": 5,
         "when_full": "reject"}]})
    [audit] = proxy_file.config.middleware
    assert isinstance(audit, Audit)
    assert (audit.queue.capacity, audit.queue.when_full) == (5, "reject")
    audit.close()


@pytest.mark.parametrize(("settings", "words"), [
    ({"queue_size": 0}, "queue capacity must be at least 1"),
    ({"when_full": "spill"}, "when_full must be one of block, drop, reject"),
])
def test_the_file_refuses_a_bad_audit_queue_setting(settings: dict[str, object],
                                                    words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"upstream": "127.0.0.1:5432", "middleware": [
            {"class": "pgwire.middleware.audit:Audit", "sink": {"type": "logging"}, **settings}]},
            source="pgwire.toml")
    assert raised.value.key == "middleware[0].class"
    assert words in str(raised.value)


def test_audit_queue_default_capacity() -> None:
    assert AuditQueue.__init__.__kwdefaults__ is not None
    assert AuditQueue.__init__.__kwdefaults__["capacity"] == 10_000
    assert AuditQueue.__init__.__kwdefaults__["when_full"] == "block"
