"""``pgwire roles`` against the real PostgreSQL of ``pg_cluster``, through the CLI in-process.

A module fixture creates a small role design (prefix ``rep_``): a reporting
group with ``pg_read_all_data``, a login that can SET ROLE to a SUPERUSER
group, a NOINHERIT pool role, an unused group and a role whose name holds
``|`` and quotes. Each test runs ``pgwire.cli.main(["roles", ...])`` and
checks the output in one format: Markdown, JSON (the facts the server
holds: connection limit, VALID UNTIL, password set, grantor, admin option),
Mermaid, SVG drawn by Graphviz, ``--fail-on-warning``/``--ignore``, the
proxy mapping of ``examples/roles.toml`` and of a set_role configuration, and
the errors: a bad DSN, an unreachable server, a refused login. The last test
builds the throwaway database of ``examples/scenarios.toml`` (~4 s).
"""

from __future__ import annotations

import json
import shutil
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwire.cli import main
from pgwire.roles.report import WARNING_CODES, report_from_json
from pgwire.testing.cluster import PostgresCluster

from .test_report import check_mermaid

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WEIRD = 'rep_we|ird "x"'
ROLES = ("rep_alice", "rep_ops", "rep_pool", "rep_reporting", "rep_admin", "rep_unused",
         WEIRD)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _drop(cluster: PostgresCluster) -> None:
    cluster.sql("".join(f"DROP ROLE IF EXISTS {_quote(name)};\n" for name in ROLES))


@pytest.fixture(scope="module")
def cluster(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    _drop(pg_cluster)
    pg_cluster.sql(f"""
        CREATE ROLE rep_reporting NOLOGIN;
        GRANT pg_read_all_data TO rep_reporting;
        CREATE ROLE rep_alice LOGIN CONNECTION LIMIT 5 VALID UNTIL '2100-01-01 00:00:00+00'
            IN ROLE rep_reporting;
        CREATE ROLE rep_admin NOLOGIN SUPERUSER;
        CREATE ROLE rep_ops LOGIN PASSWORD 'rep-ops-secret';
        GRANT rep_admin TO rep_ops WITH ADMIN OPTION;
        CREATE ROLE rep_pool LOGIN NOINHERIT;
        GRANT rep_reporting TO rep_pool;
        CREATE ROLE rep_unused NOLOGIN;
        CREATE ROLE {_quote(WEIRD)} LOGIN IN ROLE rep_reporting;
    """)
    yield pg_cluster
    _drop(pg_cluster)


def dsn(cluster: PostgresCluster) -> str:
    return cluster.dsn(sslmode="disable")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["roles", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def report_json(capsys: pytest.CaptureFixture[str], *argv: str):  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out), report_from_json(out)


def test_markdown(cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--dsn", dsn(cluster))
    assert code == 0, err
    assert out.startswith("# Role report\n")
    assert "### rep\\_alice" in out
    assert "rep\\_alice → rep\\_reporting → pg\\_read\\_all\\_data" in out
    assert 'rep\\_we\\|ird "x"' in out
    assert "| high | login-reaches-superuser | rep\\_ops |" in out
    version = int(cluster.sql("SHOW server_version_num"))
    assert ("ADMIN only" in out) == (version < 160000)
    assert "warning(s)" in err


def test_json_holds_the_servers_facts(cluster: PostgresCluster,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, report = report_json(capsys, "--dsn", dsn(cluster))
    assert data["version"] == 1 and data["database"] == "postgres"
    roles = {role["name"]: role for role in data["roles"]}
    alice = roles["rep_alice"]
    assert (alice["login"], alice["connection_limit"], alice["password_set"]) == (True, 5, False)
    assert alice["valid_until"].startswith("2100-01-01")
    assert roles["rep_ops"]["password_set"] is True
    assert roles["rep_admin"]["superuser"] and not roles["rep_admin"]["login"]
    assert roles["rep_pool"]["inherit"] is False
    assert roles[cluster.superuser]["bootstrap"] is True
    assert "pg_read_all_data" in roles and roles["pg_read_all_data"]["predefined"]
    grants = {(m["member"], m["role"]): m for m in data["memberships"]}
    ops = grants["rep_ops", "rep_admin"]
    assert ops["admin_option"] is True and ops["grantor"] == cluster.superuser
    reach = {r["login"]: r for r in data["reach"]}
    entries = {e["role"]: e for e in reach["rep_alice"]["entries"]}
    assert entries["pg_read_all_data"]["set_chain"] == ["rep_alice", "rep_reporting",
                                                        "pg_read_all_data"]
    pool = {e["role"]: e for e in reach["rep_pool"]["entries"]}
    assert pool["rep_reporting"]["inherit_chain"] is None  # NOINHERIT
    found = {(w["code"], w["subject"]) for w in data["warnings"]}
    assert ("login-reaches-superuser", "rep_ops") in found
    assert ("unused-group-role", "rep_unused") in found
    assert ("unused-group-role", "rep_reporting") not in found
    assert not any(w["subject"].startswith("rep_alice") for w in data["warnings"])
    assert "SCRAM-SHA-256$" not in json.dumps(data) and "rep-ops-secret" not in json.dumps(data)
    assert report.roles[0].name == data["roles"][0]["name"]


def test_mermaid_and_svg(cluster: PostgresCluster, capsys: pytest.CaptureFixture[str],
                         tmp_path: Path) -> None:
    _, report = report_json(capsys, "--dsn", dsn(cluster))
    check_mermaid(report)
    code, out, err = run(capsys, "--dsn", dsn(cluster), "--format", "mermaid")
    assert code == 0, err
    assert out.startswith("flowchart LR\n")
    assert "rep_we#124;ird #34;x#34;" in out
    if shutil.which("dot") is None:
        pytest.skip("Graphviz (dot) is not installed: apt-get install graphviz")
    target = tmp_path / "roles.svg"
    code, out, err = run(capsys, "--dsn", dsn(cluster), "--format", "svg", "--output",
                         str(target))
    assert code == 0, err
    root = ET.parse(target).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {"".join(node.itertext()) for node in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"rep_alice", "rep_ops", WEIRD, "pg_read_all_data"} <= texts
    titles = {"".join(node.itertext()) for node in root.iter("{http://www.w3.org/2000/svg}title")}
    assert any("->" in title for title in titles)  # edges were drawn


def test_fail_on_warning_and_ignore(cluster: PostgresCluster,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Flags and PGPASSWORD instead of a DSN.
    monkeypatch.setenv("PGPASSWORD", cluster.superuser_password)
    flags = ("--host", cluster.host, "--port", str(cluster.port), "--user", cluster.superuser,
             "--dbname", "postgres")
    monkeypatch.setenv("PGSSLMODE", "disable")
    code, _, err = run(capsys, *flags, "--fail-on-warning")
    assert code == 1, err
    ignores = [arg for code_name in WARNING_CODES for arg in ("--ignore", code_name)]
    code, _, err = run(capsys, *flags, "--fail-on-warning", *ignores)
    assert code == 0, err
    code, out, _ = run(capsys, *flags, "--format", "json", "--ignore",
                       "login-reaches-superuser:rep_ops")
    assert code == 0
    assert not any(w["subject"] == "rep_ops" and w["code"] == "login-reaches-superuser"
                   for w in json.loads(out)["warnings"])


def test_config_examples_roles(cluster: PostgresCluster, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGWIRE_GRAPH_PASSWORD", raising=False)
    data, _ = report_json(capsys, "--dsn", dsn(cluster), "--config",
                          str(EXAMPLES / "roles.toml"))
    proxy = data["proxy"]
    assert proxy["middleware"] == ["pgwire.middleware.audit:Audit (not analysed)",
                                   "RoleRewrite", "RoleGuard"]
    assert proxy["guard"]["policy"] == "drop_only" and proxy["rewrite"]["mode"] == "preserve"
    mappings = {m["startup_user"]: m for m in proxy["mappings"]}
    alice = mappings["rep_alice"]
    assert (alice["upstream_login"], alice["effective_role"]) == ("rep_alice", "rep_alice")
    assert {"rep_reporting", "pg_read_all_data"} <= set(alice["switch_to"])
    assert "rep_admin" not in mappings["rep_ops"]["switch_to"]  # SUPERUSER: not a drop
    assert not list(tmp_path.iterdir())  # no audit file, no connection of the guard's own


def test_set_role_config(cluster: PostgresCluster, capsys: pytest.CaptureFixture[str],
                         tmp_path: Path) -> None:
    config = tmp_path / "pgwire.toml"
    config.write_text("""
[[middleware]]
class = "pgwire.middleware.rewrite:RoleRewrite"
mode = "set_role"
login_role = "rep_pool"
rules = [{ user = "rep_alice", role = "rep_reporting" }, { user = "rep_ops", role = "rep_admin" }]

[[middleware]]
class = "pgwire.middleware.roles:RoleGuard"
policy = "allowlist"
allow = { rep_alice = ["rep_admin", "rep_nothing_*"] }
graph = { address = "127.0.0.1:1", user = "nobody" }
""")
    data, _ = report_json(capsys, "--dsn", dsn(cluster), "--config", str(config))
    mappings = {m["startup_user"]: m for m in data["proxy"]["mappings"]}
    alice = mappings["rep_alice"]
    assert (alice["outcome"], alice["upstream_login"], alice["effective_role"]) == (
        "ok", "rep_pool", "rep_reporting")
    assert alice["rule"] == "rule 0: rep_alice -> rep_reporting"
    assert alice["switch_to"] == []  # the guard allows rep_admin, the server does not
    assert mappings["rep_ops"]["outcome"] == "fails"  # rep_pool cannot SET ROLE rep_admin
    assert mappings["rep_pool"]["outcome"] == "refused"
    found = {(w["code"], w["subject"]) for w in data["warnings"]}
    assert ("guard-allows-privileged", "allow[rep_alice] rep_admin") in found
    assert ("guard-allowlist-matches-nothing", "allow[rep_alice] rep_nothing_*") in found
    assert ("mapped-role-unusable", "rule 1 (rep_ops -> rep_admin)") in found


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_errors_are_clear_and_exit_2(cluster: PostgresCluster,
                                     capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    code, out, err = run(capsys, "--dsn", "host=127.0.0.1 colour=blue")
    assert (code, out) == (2, "")
    assert "--dsn: unknown connection keyword 'colour'" in err
    port = _closed_port()
    code, _, err = run(capsys, "--dsn", f"postgresql://u@127.0.0.1:{port}/db")
    assert code == 2
    assert f"cannot read the roles of u@127.0.0.1:{port}/db" in err
    assert "refused" in err.lower()
    code, _, err = run(capsys, "--dsn", cluster.dsn(user="rep_nobody", sslmode="disable"))
    assert code == 2
    assert 'role "rep_nobody" does not exist' in err
    code, _, err = run(capsys, "--dsn", cluster.dsn(user="rep_unused", sslmode="disable"))
    assert code == 2 and "not permitted to log in" in err
    code, _, err = run(capsys, "--dsn", dsn(cluster), "--config", str(tmp_path / "no.toml"))
    assert code == 2 and "cannot read the file" in err
    code, _, err = run(capsys, "--scenario", "x.toml", "--dsn", dsn(cluster))
    assert code == 2 and "--scenario builds its own database" in err
    code, _, err = run(capsys, "--scenario", str(tmp_path / "none.toml"))
    assert code == 2 and "none.toml" in err
    code, _, err = run(capsys, "--dsn", dsn(cluster), "--ignore", "bogus")
    assert code == 2 and "unknown warning code" in err
    with pytest.raises(SystemExit) as usage:
        main(["roles", "--format", "pdf"])
    assert usage.value.code == 2


def test_scenario_file(capsys: pytest.CaptureFixture[str]) -> None:
    # Builds the throwaway cluster of the example scenario file (its own server).
    data, _ = report_json(capsys, "--scenario", str(EXAMPLES / "scenarios.toml"),
                          "--dbname", "shop")
    assert data["database"] == "shop"
    proxy = data["proxy"]
    assert proxy["rewrite"]["mode"] == "set_role"
    assert proxy["rewrite"]["login_role"] == "shop_pool"
    assert proxy["guard"]["policy"] == "drop_only"
    assert proxy["pool"]["mode"] == "transaction"
    mappings = {m["startup_user"]: m for m in proxy["mappings"]}
    alice = mappings["alice"]
    assert (alice["source"], alice["outcome"], alice["upstream_login"],
            alice["effective_role"]) == ("proxy-user", "ok", "shop_pool", "shop_reporting")
    assert alice["switch_to"] == ["shop_readonly"]  # a drop; never back to shop_pool
    assert mappings["mallory"]["outcome"] == "refused"
    roles = {role["name"]: role for role in data["roles"]}
    assert roles["shop_pool"]["inherit"] is False
    # The example is a clean design: nothing severe to report.
    assert [w for w in data["warnings"] if w["severity"] == "high"] == []
