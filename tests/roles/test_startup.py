"""Startup parameters as PostgreSQL 15 reads them (pgwire.roles._startup), and
RoleRewrite's decisions and rewritten packets, without a network.

The facts the tables encode were checked against a PostgreSQL 15.18 server;
``tests/roles/test_rewrite_live.py`` checks the parser against the server
directly (``test_parse_options_agrees_with_postgresql``). The last tests run
RoleRewrite in a sans-IO proxy session and read the StartupMessage that
leaves it toward the server with a real ``pgwire.Backend``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.middleware.rewrite import RoleMapping, RoleRewrite, RoleRule
from pgwire.proxy import (
    MAIN_LINK,
    CloseClient,
    OpenUpstream,
    Proxy,
    ProxyConfig,
    SendToClient,
    SendToUpstream,
)
from pgwire.proxy.config_file import ConfigError, parse_config
from pgwire.roles._startup import (
    ROLE_SETTINGS,
    InvalidOptions,
    OptionSetting,
    StartupPolicy,
    StartupRefused,
    is_replication,
    join_options,
    normalize_setting_name,
    parse_options,
    sanitize_startup,
    split_options,
)

# -- split_options ----------------------------------------------------------------------

SPLITS = [
    ("", []),
    ("   ", []),
    ("-c a=b", ["-c", "a=b"]),
    ("  -c   a=b  ", ["-c", "a=b"]),
    ("-c\ta=b\n-F\r-e\v-i\f-l", ["-c", "a=b", "-F", "-e", "-i", "-l"]),
    ("-c a=x\\ y", ["-c", "a=x y"]),
    ("-c a=x\\\\y", ["-c", "a=x\\y"]),
    ("-c a=x\\\\ -F", ["-c", "a=x\\", "-F"]),
    ("\\-c role=x", ["-c", "role=x"]),
    ("-c a=\\b\\c", ["-c", "a=bc"]),
    ("-c a=x\\\ty", ["-c", "a=x\ty"]),
    # C isspace() knows only the six ASCII spaces: not 0x1C-0x1F, not U+00A0/U+0085/U+2003.
    ("-c\x1crole=x", ["-c\x1crole=x"]),
    ("-c a=x\u00a0-crole=y", ["-c", "a=x\u00a0-crole=y"]),
    ("-c a=x\u0085y\u2003z", ["-c", "a=x\u0085y\u2003z"]),
    ("-c a=\u00e9t\u00e9", ["-c", "a=\u00e9t\u00e9"]),
]


@pytest.mark.parametrize(("options", "words"), SPLITS)
def test_split_options(options: str, words: list[str]) -> None:
    assert split_options(options) == words


@pytest.mark.parametrize("options", ["\\", "-c a=b\\", "-c a=b \\", "-c a=\\\\\\"])
def test_a_backslash_escaping_nothing_is_refused(options: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        split_options(options)
    assert info.value.sqlstate == "42601"
    assert "backslash" in info.value.message


# -- parse_options: what sets the role --------------------------------------------------

ROLE_SETTERS = [
    ("-c role=x", "role"),
    ("-crole=x", "role"),
    ("--role=x", "role"),
    ("-c ROLE=x", "role"),
    ("--Role=x", "role"),
    ("-c rOlE=x", "role"),
    ("-ecrole=x", "role"),          # clustered: -e, then -c with an attached argument
    ("-ec role=x", "role"),         # clustered: -e, then -c taking the next word
    ("-e-role=x", "role"),          # clustered: -e, then -- with an attached argument
    ("-Fcrole=x", "role"),
    ("\\-c role=x", "role"),        # the escape vanishes before getopt sees the word
    ("-\\c r\\ole=x", "role"),
    ("-c\trole=x", "role"),
    ("-c\vrole=x", "role"),
    ("-c\frole=x", "role"),
    ("-c\rrole=x", "role"),
    ("-c\nrole=x", "role"),
    ("-c role=x --", "role"),       # a trailing -- ends the switches harmlessly
    ("-c role=", "role"),
    ("-c role=a=b", "role"),
    ("-c role=x\\ y", "role"),
    ("-c session_authorization=x", "session_authorization"),
    ("-c session-authorization=x", "session_authorization"),  # ParseLongOption: - is _
    ("--session-authorization=x", "session_authorization"),
    ("--SESSION_AUTHORIZATION=x", "session_authorization"),
    ("-c Session-Authorization=x", "session_authorization"),
    ("-c search_path=a\\ b -c role=x", "role"),
    ("-B 128 -d 1 -c application_name=y --role=x -S 64", "role"),
]


@pytest.mark.parametrize(("options", "setting"), ROLE_SETTERS)
def test_every_spelling_of_a_role_setting_is_seen(options: str, setting: str) -> None:
    switches = parse_options(options)
    setters = [switch for switch in switches if switch.sets_role]
    assert len(setters) == 1
    [(name, _)] = setters[0].settings
    assert name == setting


LOOK_ALIKES = [
    ("-c x.role=y", "x.role"),
    ("-c\\ role=x", " role"),       # an escaped space stays in the name: no such setting
    ("-c ro-le=x", "ro_le"),
    ("-c rolex=y", "rolex"),
    ("-c application_name=role=x", "application_name"),
    ("-c\x1crole=x", "\x1crole"),
    ("-c a=x\u00a0-crole=y", "a"),
    ("-c role\u0130=x", "role\u0130"),       # only ASCII letters fold
    ("-c \u0280ole=x", "\u0280ole"),
    ("---role=x", "_role"),                  # -- with argument "-role=x"
    ("-c session_authorizatio=x", "session_authorizatio"),
]


@pytest.mark.parametrize(("options", "name"), LOOK_ALIKES)
def test_look_alikes_do_not_set_the_role(options: str, name: str) -> None:
    [switch] = parse_options(options)
    assert not switch.sets_role
    assert [setting for setting, _ in switch.settings] == [name]


def test_names_fold_ascii_only() -> None:
    assert normalize_setting_name("ROLE") == "role"
    assert normalize_setting_name("Session_Authorization") == "session_authorization"
    assert normalize_setting_name("\u0130") == "\u0130"
    assert normalize_setting_name("\u212a") == "\u212a"  # KELVIN SIGN stays (Python would fold)


SWITCH_SETTINGS = [
    ("-B 128", (("shared_buffers", "128"),)),
    ("-B128", (("shared_buffers", "128"),)),
    ("-d 0", (("log_min_messages", "notice"),)),
    ("-d x", (("log_min_messages", "notice"),)),
    ("-d -3", (("log_min_messages", "notice"),)),
    ("-d 1", (("log_min_messages", "debug1"),)),
    ("-d 2", (("log_min_messages", "debug2"), ("log_statement", "all"))),
    ("-d 5x", (("log_min_messages", "debug5"), ("log_statement", "all"),
               ("debug_print_parse", "true"), ("debug_print_plan", "true"),
               ("debug_print_rewritten", "true"))),
    ("-e", (("datestyle", "euro"),)),
    ("-F", (("fsync", "false"),)),
    ("-f s", (("enable_seqscan", "false"),)),
    ("-fhash", (("enable_hashjoin", "false"),)),
    ("-f o", (("enable_indexonlyscan", "false"),)),
    ("-h 0.0.0.0", (("listen_addresses", "0.0.0.0"),)),
    ("-i", (("listen_addresses", "*"),)),
    ("-k /tmp", (("unix_socket_directories", "/tmp"),)),
    ("-l", (("ssl", "true"),)),
    ("-N 5", (("max_connections", "5"),)),
    ("-O", (("allow_system_table_mods", "true"),)),
    ("-P", (("ignore_system_indexes", "true"),)),
    ("-p 5433", (("port", "5433"),)),
    ("-S 1024", (("work_mem", "1024"),)),
    ("-s", (("log_statement_stats", "true"),)),
    ("-t pa", (("log_parser_stats", "true"),)),
    ("-t planner", (("log_planner_stats", "true"),)),
    ("-t e", (("log_executor_stats", "true"),)),
    ("-W 10", (("post_auth_delay", "10"),)),
    ("-C x", ()),
    ("-D /data", ()),
    ("-r out", ()),
    ("-v 3", ()),
    ("-b", ()),
    ("-E", ()),
    ("-j", ()),
    ("-n", ()),
    ("-T", ()),
    ("-c a=b", (("a", "b"),)),
    ("-c A-B=c=d", (("a_b", "c=d"),)),
    ("-c =x", (("", "x"),)),
]


@pytest.mark.parametrize(("options", "expected"), SWITCH_SETTINGS)
def test_what_each_switch_sets(options: str, expected: tuple[tuple[str, str], ...]) -> None:
    [switch] = parse_options(options)
    assert switch.settings == expected


def test_an_argument_is_the_next_word_whatever_it_looks_like() -> None:
    assert parse_options("-c -x=y") == [OptionSetting("c", "-x=y")]
    assert parse_options("-B -c") == [OptionSetting("B", "-c")]
    assert parse_options("-C --") == [OptionSetting("C", "--")]
    assert parse_options("-FeB 1 -c a=b") == [
        OptionSetting("F"), OptionSetting("e"), OptionSetting("B", "1"),
        OptionSetting("c", "a=b")]


INVALID = [
    ("-c", "invalid command-line argument for server process: -c"),
    ("-F -c", "invalid command-line argument for server process: -c"),
    ("-c role", "-c role requires a value"),
    ("-crole", "-c role requires a value"),
    ("--role", "--role requires a value"),
    ("-c --", "-c -- requires a value"),
    ("foo", "invalid command-line argument for server process: foo"),
    ("-c a=b foo", "invalid command-line argument for server process: foo"),
    ("-x", "invalid command-line argument for server process: -x"),
    ("-Fx", "invalid command-line argument for server process: -Fx"),
    ("-o x", "invalid command-line argument for server process: -o"),  # gone in 15
    ("-", "invalid command-line argument for server process: -"),
    ("-c a=b -- x", "invalid command-line argument for server process: x"),
    ("-- -c role=x", "invalid command-line argument for server process: -c"),
    ("-t x", "invalid command-line argument for server process: x"),
    ("-t p", "invalid command-line argument for server process: p"),
    ("-f z", "invalid command-line argument for server process: z"),
    ("-B", "invalid command-line argument for server process: -B"),
]


@pytest.mark.parametrize(("options", "message"), INVALID)
def test_options_postgresql_refuses_are_refused_with_its_words(options: str,
                                                                 message: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        parse_options(options)
    assert info.value.sqlstate == "42601"
    assert info.value.message == message


def test_option_setting_validates() -> None:
    for switch, argument in [("x", None), ("o", "1"), ("c", None), ("c", "role"),
                             ("-", "a"), ("B", ""), ("F", "1"), ("t", "x"), ("f", "z"),
                             ("c", "a=\0")]:
        with pytest.raises(ValueError):
            OptionSetting(switch, argument)
    with pytest.raises(ValueError, match="cannot contain '='"):
        OptionSetting.set("a=b", "c")
    setting = OptionSetting.set("Search_Path", "a b")
    assert (setting.name, setting.value, setting.settings) == (
        "Search_Path", "a b", (("search_path", "a b"),))
    assert OptionSetting.set("role", "x", long=True) == OptionSetting("-", "role=x")
    assert OptionSetting("B", "1").name is None
    assert OptionSetting("B", "1").value is None


# -- join_options -----------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"))
_NAME = st.one_of(
    st.sampled_from(["role", "ROLE", "search_path", "session-authorization", "a.b", ""]),
    _TEXT.filter(lambda name: "=" not in name),
)
_VALUE = st.one_of(st.sampled_from(["", " ", "\\", "a b", "x\\ y", "=", "-c role=x"]), _TEXT)
_ARGUMENT = st.one_of(st.sampled_from(["1", "-c", "--", " ", "\\"]), _TEXT.filter(bool))


@st.composite
def option_settings(draw: st.DrawFn) -> OptionSetting:
    """Any switch a client may send, with arguments full of spaces, backslashes and '='."""
    kind = draw(st.sampled_from(["c", "-", "flag", "argument", "t", "f"]))
    if kind in ("c", "-"):
        return OptionSetting.set(draw(_NAME), draw(_VALUE), long=kind == "-")
    if kind == "flag":
        return OptionSetting(draw(st.sampled_from(sorted("bEeFijlnOPsT"))))
    if kind == "t":
        return OptionSetting("t", draw(st.sampled_from(["pa", "pl", "e"])) + draw(_TEXT))
    if kind == "f":
        return OptionSetting("f", draw(st.sampled_from(sorted("siobtnmh"))) + draw(_TEXT))
    return OptionSetting(draw(st.sampled_from(sorted("BCDdhkNprSvW"))), draw(_ARGUMENT))


@given(st.lists(option_settings(), max_size=6))
def test_join_then_parse_gives_the_same_settings(settings_: list[OptionSetting]) -> None:
    assert parse_options(join_options(settings_)) == settings_


def test_join_escapes_spaces_and_backslashes() -> None:
    assert join_options([OptionSetting.set("search_path", "a b\\c"),
                         OptionSetting.set("role", "x y", long=True),
                         OptionSetting("F"), OptionSetting("B", "1")]) == (
        "-c search_path=a\\ b\\\\c --role=x\\ y -F -B 1")
    assert join_options([]) == ""


_OPTION_CHARS = st.sampled_from([*"-c=\\ \t\x0brolesiFeBdtfpa.x_\u00a0\x1c", "--", "-c"])


@given(st.one_of(_TEXT, st.lists(_OPTION_CHARS, max_size=30).map("".join)))
@settings(max_examples=300)
def test_parse_accepts_or_raises_invalid_options_only(options: str) -> None:
    try:
        switches = parse_options(options)
    except InvalidOptions as exc:
        assert exc.sqlstate == "42601"
        return
    # What it accepted, written back, reads the same.
    assert parse_options(join_options(switches)) == switches


@pytest.mark.slow
@given(st.lists(option_settings(), max_size=12),
       st.one_of(_TEXT, st.lists(_OPTION_CHARS, max_size=60).map("".join)))
@settings(max_examples=4000, deadline=None)
def test_options_long_run(settings_: list[OptionSetting], options: str) -> None:
    assert parse_options(join_options(settings_)) == settings_
    try:
        switches = parse_options(options)
    except InvalidOptions:
        return
    assert parse_options(join_options(switches)) == switches


# -- replication ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["database", "true", "TRUE", "t", "tr", "on", "On", "yes",
                                   "y", "1"])
def test_replication_values_that_start_a_walsender(value: str) -> None:
    assert is_replication(value)


@pytest.mark.parametrize("value", ["false", "f", "FALSE", "off", "of", "no", "n", "0"])
def test_replication_values_that_do_not(value: str) -> None:
    assert not is_replication(value)


@pytest.mark.parametrize("value", ["", "o", "maybe", "truex", "2", "01", " true", "Database",
                                   "ye\u015b"])
def test_replication_values_postgresql_refuses(value: str) -> None:
    with pytest.raises(StartupRefused) as info:
        is_replication(value)
    assert info.value.sqlstate == "22023"
    assert info.value.message == f'invalid value for parameter "replication": "{value}"'


# -- sanitize_startup -------------------------------------------------------------------


def packet(*pairs: tuple[str, str], version: int = pw.PROTOCOL_3_0) -> pw.StartupMessage:
    return pw.StartupMessage(protocol_version=version, parameters=pairs)


def refused(startup: pw.StartupMessage, policy: StartupPolicy | None = None
            ) -> StartupRefused:
    with pytest.raises(StartupRefused) as info:
        sanitize_startup(startup, policy or StartupPolicy())
    return info.value


STRIP = StartupPolicy(role_parameters="strip", replication="strip")


def test_an_ordinary_packet_passes_unchanged() -> None:
    startup = packet(("user", "app"), ("database", "db"), ("application_name", "x"),
                     ("options", "-c  search_path=a\\ b   -F"), ("_pq_.opt", "1"),
                     ("client_encoding", "UTF8"), version=pw.PROTOCOL_3_2)
    assert sanitize_startup(startup) == startup


@pytest.mark.parametrize(("first", "second"), [
    ("user", "user"), ("database", "database"), ("options", "options"),
    ("replication", "replication"), ("search_path", "search_path"),
    ("search_path", "SEARCH_PATH"), ("role", "Role"), ("_pq_.x", "_pq_.x"),
])
def test_duplicates_are_refused(first: str, second: str) -> None:
    error = refused(packet(("user", "app"), (first, "a"), ("database", "db"), (second, "b")),
                    STRIP)
    assert error.sqlstate == "08P01"
    assert error.message.startswith(f'duplicate startup parameter "{second}"')


def test_the_last_user_wins_trap_is_refused() -> None:
    # PostgreSQL logs this in as postgres: whoever reads the first "user" is fooled.
    error = refused(packet(("user", "app"), ("database", "db"), ("user", "postgres")))
    assert (error.sqlstate, error.message) == ("08P01", 'duplicate startup parameter "user"')


def test_user_and_USER_are_different_parameters() -> None:
    # "USER" is a setting to PostgreSQL (which refuses it), not the user name.
    startup = packet(("user", "app"), ("USER", "postgres"))
    assert sanitize_startup(startup) == startup


def test_last_wins_keeps_what_postgresql_would_use() -> None:
    policy = StartupPolicy(duplicates="last_wins", role_parameters="strip")
    startup = packet(("user", "app"), ("search_path", "a"), ("database", "db"),
                     ("user", "postgres"), ("SEARCH_PATH", "b"), ("options", "-c role=x"),
                     ("options", "-F"))
    assert sanitize_startup(startup, policy).parameters == (
        ("database", "db"), ("user", "postgres"), ("SEARCH_PATH", "b"), ("options", "-F"))


@pytest.mark.parametrize("key", ["role", "ROLE", "Role", "session_authorization",
                                 "SESSION_AUTHORIZATION"])
def test_role_keys_are_refused_or_stripped(key: str) -> None:
    startup = packet(("user", "app"), (key, "admin"), ("database", "db"))
    error = refused(startup)
    assert error.sqlstate == "42501"
    assert f'startup parameter "{key}"' in error.message
    assert sanitize_startup(startup, STRIP).parameters == (("user", "app"), ("database", "db"))


def test_session_dash_authorization_key_is_not_a_role_setting() -> None:
    # No '-' to '_' for keys: PostgreSQL refuses it as an unknown setting.
    startup = packet(("user", "app"), ("session-authorization", "admin"))
    assert sanitize_startup(startup) == startup


@pytest.mark.parametrize(("options", "setting"), ROLE_SETTERS)
def test_role_options_are_refused(options: str, setting: str) -> None:
    error = refused(packet(("user", "app"), ("options", options)))
    assert error.sqlstate == "42501"
    assert "options switch" in error.message


STRIPPED = [
    ("-c role=x", None),
    ("-crole=x -c role=y", None),
    ("-c application_name=a\\ b -c role=x --search-path=s",
     "-c application_name=a\\ b --search-path=s"),
    ("-ecrole=x", "-e"),
    ("-e-role=x -F", "-e -F"),
    ("-B 128 -d 1 -c application_name=y --role=x -S 64",
     "-B 128 -d 1 -c application_name=y -S 64"),
    ("-c search_path=a\\\\b\\ c -c session-authorization=x -c role=y --",
     "-c search_path=a\\\\b\\ c"),
]


@pytest.mark.parametrize(("options", "kept"), STRIPPED)
def test_strip_keeps_every_other_switch(options: str, kept: str | None) -> None:
    result = sanitize_startup(packet(("user", "app"), ("options", options), ("x.y", "1")),
                              STRIP)
    expected = [("user", "app"), ("x.y", "1")]
    if kept is not None:
        expected.insert(1, ("options", kept))
        # Meaningfully the same: every switch but the role-setting ones, in order.
        assert parse_options(kept) == [s for s in parse_options(options) if not s.sets_role]
    assert list(result.parameters) == expected


@pytest.mark.parametrize("options", ["-c", "-c role", "--role", "foo", "-c a=b\\"])
def test_invalid_options_are_refused_even_when_stripping(options: str) -> None:
    error = refused(packet(("user", "app"), ("options", options)), STRIP)
    assert error.sqlstate == "42601"


@pytest.mark.parametrize("value", ["database", "true", "1", "on", "yes"])
def test_replication_is_refused_or_stripped(value: str) -> None:
    startup = packet(("user", "app"), ("replication", value), ("database", "db"))
    error = refused(startup)
    assert (error.sqlstate, error.message) == (
        "42501", "replication connections are not allowed through this proxy")
    assert sanitize_startup(startup, STRIP).parameters == (("user", "app"), ("database", "db"))


def test_replication_off_passes_and_bad_values_are_refused() -> None:
    startup = packet(("user", "app"), ("replication", "false"))
    assert sanitize_startup(startup) == startup
    assert refused(packet(("user", "app"), ("replication", "maybe")), STRIP).sqlstate == "22023"
    # Only the exact key is replication; "Replication" is an unknown setting to PostgreSQL.
    other = packet(("user", "app"), ("Replication", "true"))
    assert sanitize_startup(other) == other


def test_allowed_parameters() -> None:
    policy = StartupPolicy(allowed_parameters=frozenset({"Application_Name", "search_path"}))
    assert policy.allowed_parameters == frozenset({"application_name", "search_path"})
    startup = packet(("user", "app"), ("database", "db"), ("APPLICATION_NAME", "x"),
                     ("options", "-c search_path=s -C ignored --application-name=y"),
                     ("_pq_.x", "1"))
    assert sanitize_startup(startup, policy) == startup
    error = refused(packet(("user", "app"), ("work_mem", "1GB")), policy)
    assert (error.sqlstate, error.message) == (
        "42501", 'startup parameter "work_mem" is not allowed through this proxy')
    error = refused(packet(("user", "app"), ("options", "-c search_path=s -S 64")), policy)
    assert error.message == 'startup parameter "work_mem" is not allowed through this proxy'
    assert error.detail is not None and '"-S 64"' in error.detail
    # Role settings follow their own policy, whatever the allowlist says.
    assert refused(packet(("user", "app"), ("role", "x")), policy).sqlstate == "42501"


def test_policy_validation() -> None:
    for bad in ({"duplicates": "first"}, {"role_parameters": "allow"},
                {"replication": "pass"}, {"allowed_parameters": "search_path"},
                {"allowed_parameters": [1]}, {"allowed_parameters": [""]}, {"bogus": 1}):
        with pytest.raises(ValueError):
            StartupPolicy.from_mapping(bad)
    policy = StartupPolicy.from_mapping({"allowed_parameters": ["search_path"],
                                         "role_parameters": "strip"})
    assert policy == StartupPolicy(role_parameters="strip",
                                   allowed_parameters=frozenset({"search_path"}))


_KEYS = st.one_of(
    st.sampled_from(["user", "database", "options", "replication", "role", "ROLE",
                     "session_authorization", "Session_Authorization", "search_path",
                     "application_name", "_pq_.x", "USER", "x.role"]),
    _TEXT.filter(bool),
)
_VALUES = st.one_of(st.sampled_from(["true", "false", "database", "-c role=x", "x",
                                     "-crole=y -F", "-c a=b\\ c", "--"]), _TEXT)


@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=8),
       st.sampled_from(["refuse", "last_wins"]), st.sampled_from(["refuse", "strip"]),
       st.sampled_from(["refuse", "strip"]))
@settings(max_examples=300)
def test_sanitize_any_packet(pairs: list[tuple[str, str]], duplicates: Any,
                             role_parameters: Any, replication: Any) -> None:
    policy = StartupPolicy(duplicates=duplicates, role_parameters=role_parameters,
                           replication=replication)
    startup = packet(*pairs)
    try:
        result = sanitize_startup(startup, policy)
    except StartupRefused as exc:
        assert exc.sqlstate in ("08P01", "42501", "42601", "22023")
        return
    keys = [key for key, _ in result.parameters]
    identities = [("packet", key) if key in ("user", "database", "options", "replication")
                  else ("setting", normalize_setting_name(key)) for key in keys]
    assert len(set(identities)) == len(identities), "no duplicates go upstream"
    assert ROLE_SETTINGS.isdisjoint(normalize_setting_name(key) for key in keys)
    for key, value in result.parameters:
        if key == "options":
            assert not any(switch.sets_role for switch in parse_options(value))
        if key == "replication":
            assert not is_replication(value)
    # What PostgreSQL will use for user and database is what the client asked for.
    assert result.get("user") == startup.get("user")
    assert result.get("database") == startup.get("database")
    # Whatever is kept keeps its order.
    originals = iter(pair for pair in startup.parameters if pair[0] != "options")
    kept = [pair for pair in result.parameters if pair[0] != "options"]
    assert all(pair in originals for pair in kept), "a subsequence of the original"
    assert result.protocol_version == startup.protocol_version


# -- RoleRewrite: configuration ---------------------------------------------------------


@pytest.mark.parametrize(("arguments", "message"), [
    ({"mode": "bogus"}, "mode must be one of"),
    ({"mode": "fixed"}, "needs login_role"),
    ({"mode": "set_role", "unmapped": "preserve"}, "needs login_role"),
    ({"mode": "map"}, "needs at least one rule"),
    ({"mode": "preserve", "login_role": "x"}, "takes no login_role"),
    ({"mode": "map", "login_role": "x", "rules": [{"user": "a", "role": "b"}]},
     "takes no login_role"),
    ({"mode": "fixed", "login_role": "x", "rules": [{"user": "a", "role": "b"}]},
     "takes no rules"),
    ({"mode": "set_role", "login_role": "pool"}, "would refuse everyone"),
    ({"mode": "map", "rules": [{"user": "a"}]}, r"rules\[0\]: a role rule needs role"),
    ({"mode": "map", "rules": [{"user": "a", "role": "b", "db": "c"}]}, "unknown role rule"),
    ({"mode": "map", "rules": [{"user": "a", "role": "{role}"}]}, "only {user} and"),
    ({"mode": "map", "rules": [{"user": "a", "role": "{user.__class__}"}]}, "only {user}"),
    ({"mode": "map", "rules": [{"user": "a", "role": "{user!r}"}]}, "only {user}"),
    ({"mode": "map", "rules": [{"user": "a", "role": "{"}]}, "not a valid template"),
    ({"mode": "map", "rules": [{"user": "", "role": "b"}]}, "non-empty"),
    ({"mode": "map", "rules": [{"user": "a", "role": "b", "database": ""}]}, "non-empty"),
    ({"mode": "map", "rules": {"user": "a", "role": "b"}}, "must be a list"),
    ({"mode": "map", "rules": ["a"]}, r"rules\[0\] must be"),
    ({"unmapped": "allow"}, "unmapped must be"),
    ({"policy": {"role_parameters": "keep"}}, "role_parameters must be"),
    ({"policy": "strict"}, "policy must be"),
    ({"mode": "fixed", "login_role": ""}, "non-empty role name"),
])
def test_configuration_is_checked_eagerly(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoleRewrite(**arguments)


def test_rules_from_toml_shapes() -> None:
    rewrite = RoleRewrite(mode="map", rules=[
        {"user": "report_*", "role": "reporting"},
        RoleRule(user="*", database="sales", role="sales_{user}"),
    ], policy={"role_parameters": "strip"})
    assert rewrite.rules[0] == RoleRule(user="report_*", role="reporting")
    assert rewrite.policy.role_parameters == "strip"
    assert "mode=map" in repr(rewrite)


def test_a_toml_middleware_table_builds_the_same_rewrite() -> None:
    data = tomllib.loads("""
upstream = "127.0.0.1:5432"

[[middleware]]
class = "pgwire.middleware.rewrite:RoleRewrite"
mode = "set_role"
login_role = "pool"
unmapped = "preserve"
rules = [
  { user = "report_*", role = "reporting" },
  { user = "*", database = "sales", role = "sales_{user}" },
]

[middleware.policy]
role_parameters = "strip"
allowed_parameters = ["application_name", "search_path"]
""")
    (made,) = parse_config(data).config.middleware
    assert isinstance(made, RoleRewrite)
    assert (made.mode, made.login_role, made.unmapped) == ("set_role", "pool", "preserve")
    assert made.rules == (RoleRule(user="report_*", role="reporting"),
                          RoleRule(user="*", database="sales", role="sales_{user}"))
    assert made.policy == StartupPolicy(
        role_parameters="strip",
        allowed_parameters=frozenset({"application_name", "search_path"}))
    bad = dict(data, middleware=[dict(data["middleware"][0], mode="sideways")])
    with pytest.raises(ConfigError, match="mode must be one of"):
        parse_config(bad)


# -- RoleRewrite: decisions -------------------------------------------------------------

MAP = RoleRewrite("map", rules=[
    {"user": "report_*", "role": "reporting"},
    {"user": "alice", "database": "sales", "role": "sales_rw"},
    {"user": "alice", "database": "hr_*", "role": "hr_{database}"},
    {"user": "[[]x]*", "role": "bracket"},
    {"user": "bo?", "role": "{user}_login"},
])


@pytest.mark.parametrize(("user", "database", "login_role"), [
    ("report_a", "any", "reporting"),
    ("report_", "any", "reporting"),
    ("alice", "sales", "sales_rw"),
    ("alice", "hr_2024", "hr_hr_2024"),
    ("[x]y", "db", "bracket"),
    ("bob", "db", "bob_login"),
    ("bo{user}", "db", None),
    ("alice", "other", None),
    ("Report_a", "any", None),   # role names are case-sensitive
    ("report", "any", None),
    ("xy", "db", None),
])
def test_map_rules(user: str, database: str, login_role: str | None) -> None:
    mapping = MAP.resolve(user, database)
    if login_role is None:
        assert mapping is None
    else:
        assert mapping is not None
        assert (mapping.login_role, mapping.role, mapping.effective_role) == (
            login_role, None, login_role)


def test_placeholders_are_not_re_expanded() -> None:
    rewrite = RoleRewrite("map", rules=[{"user": "*", "role": "r_{user}_{database}"}])
    mapping = rewrite.resolve("{database}", "{user}")
    assert mapping is not None and mapping.login_role == "r_{database}_{user}"


def test_first_matching_rule_wins() -> None:
    rewrite = RoleRewrite("map", rules=[{"user": "a*", "role": "first"},
                                        {"user": "ab", "role": "second"}])
    mapping = rewrite.resolve("ab", "db")
    assert mapping is not None and mapping.login_role == "first"
    assert mapping.rule == RoleRule(user="a*", role="first")


def test_modes() -> None:
    assert RoleRewrite().resolve("u", "d") == RoleMapping(client_user="u", database="d",
                                                          login_role="u")
    assert RoleRewrite("fixed", login_role="app").resolve("u", "d") == RoleMapping(
        client_user="u", database="d", login_role="app")
    preserve = RoleRewrite("map", rules=[{"user": "x", "role": "y"}], unmapped="preserve")
    mapping = preserve.resolve("u", "d")
    assert mapping is not None and mapping.login_role == "u"
    set_role = RoleRewrite("set_role", login_role="pool", unmapped="preserve",
                           rules=[{"user": "intern_*", "role": "readers"}])
    assert set_role.resolve("intern_1", "d") == RoleMapping(
        client_user="intern_1", database="d", login_role="pool", role="readers",
        rule=RoleRule(user="intern_*", role="readers"))
    mapping = set_role.resolve("carol", "d")
    assert mapping is not None and (mapping.login_role, mapping.role) == ("pool", "carol")
    assert mapping.effective_role == "carol"
    strict = RoleRewrite("set_role", login_role="pool", rules=[{"user": "a", "role": "b"}])
    assert strict.resolve("carol", "d") is None


# -- RoleRewrite in a sans-IO session: the packet that leaves the proxy ------------------


def through_proxy(rewrite: RoleRewrite, *pairs: tuple[str, str]
                  ) -> pw.StartupMessage | pw.ErrorResponse:
    """Send a StartupMessage into a proxy session; return what reaches the server
    (its StartupMessage, read by a real Backend) or the client's FATAL error."""
    proxy = Proxy(ProxyConfig(upstream=("127.0.0.1", 5432), middleware=[rewrite]))
    session = proxy.new_session(("127.0.0.1", 50000))
    client, server = pw.Frontend(), pw.Backend()
    session.start()
    actions = session.client_data(client.send(pw.StartupMessage(parameters=pairs)))
    if any(isinstance(action, CloseClient) for action in actions):
        for action in actions:
            if isinstance(action, SendToClient):
                client.receive_data(action.data)
        error = client.next_event()
        assert isinstance(error, pw.ErrorResponse) and error.severity == "FATAL"
        return error
    assert any(isinstance(action, OpenUpstream) for action in actions), actions
    for action in session.upstream_connected(MAIN_LINK):
        if isinstance(action, SendToUpstream):
            server.receive_data(action.data)
    startup = server.next_event()
    assert isinstance(startup, pw.StartupMessage)
    return startup


SET_ROLE = RoleRewrite("set_role", login_role="pool", unmapped="preserve",
                       rules=[{"user": "intern_*", "role": "readers"}],
                       policy={"role_parameters": "strip"})


def sent(result: pw.StartupMessage | pw.ErrorResponse) -> Sequence[tuple[str, str]]:
    assert isinstance(result, pw.StartupMessage), result
    return result.parameters


def test_set_role_sends_the_pool_role_and_the_role_last() -> None:
    parameters = sent(through_proxy(
        SET_ROLE, ("user", "intern_7"), ("database", "db"),
        ("options", "-c role=admin -c application_name=a\\ b"), ("ROLE", "admin"),
        ("application_name", "app")))
    assert dict(parameters)["user"] == "pool"
    assert dict(parameters)["database"] == "db"
    assert parse_options(dict(parameters)["options"]) == [
        OptionSetting.set("application_name", "a b")]
    role_settings = [(k, v) for k, v in parameters if normalize_setting_name(k) == "role"]
    assert role_settings == [("role", "readers")]
    assert parameters[-1] == ("role", "readers")


def test_a_rewritten_user_keeps_the_clients_default_database() -> None:
    parameters = dict(sent(through_proxy(RoleRewrite("fixed", login_role="app"),
                                         ("user", "alice"))))
    assert (parameters["user"], parameters["database"]) == ("app", "alice")
    parameters = dict(sent(through_proxy(RoleRewrite(), ("user", "alice"))))
    assert parameters["user"] == "alice"
    assert parameters.get("database") in (None, "alice")


def test_unmapped_users_are_refused_with_28000() -> None:
    error = through_proxy(MAP, ("user", "mallory"), ("database", "db"))
    assert isinstance(error, pw.ErrorResponse)
    assert (error.code, error.message) == ("28000", 'no role mapping for user "mallory"')


def test_the_duplicate_user_trap_is_closed_before_the_mapping() -> None:
    # Mapped as "report_a" by the first key, PostgreSQL would log in as the last.
    error = through_proxy(MAP, ("user", "report_a"), ("database", "db"),
                          ("user", "postgres"))
    assert isinstance(error, pw.ErrorResponse)
    assert (error.code, error.message) == ("08P01", 'duplicate startup parameter "user"')


@pytest.mark.parametrize(("pairs", "code"), [
    ((("user", "a"), ("options", "-c role=x")), "42501"),
    ((("user", "a"), ("replication", "database")), "42501"),
    ((("user", "a"), ("options", "-c")), "42601"),
    ((("user", "a"), ("replication", "maybe")), "22023"),
])
def test_refusals_reach_the_client_as_fatal(pairs: tuple[tuple[str, str], ...],
                                            code: str) -> None:
    error = through_proxy(RoleRewrite(), *pairs)
    assert isinstance(error, pw.ErrorResponse) and error.code == code
