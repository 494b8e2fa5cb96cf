"""Write a role report as Markdown, JSON, Mermaid, DOT, or SVG (through Graphviz).

Role names may hold any character but NUL, so every writer escapes them for
its format: Markdown cells escape the characters that end a cell or start
markup, Mermaid labels spell every character that is not a plain letter,
digit or space as an entity code (``#34;``), DOT strings escape quotes and
backslashes (Graphviz's own ``\\N``-style sequences included) and spell
control characters as text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import types
import typing
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ._graph import PRIVILEGED_ATTRIBUTES
from ._report_model import (
    SCHEMA_VERSION,
    SEVERITIES,
    LoginReach,
    MembershipRow,
    ProxyReport,
    RoleReport,
    RoleRow,
)

__all__ = [
    "GraphvizError",
    "GraphvizUnavailable",
    "report_from_json",
    "to_dot",
    "to_json",
    "to_markdown",
    "to_mermaid",
    "to_svg",
]

#: Seconds ``dot`` may take before :func:`to_svg` gives up.
DOT_TIMEOUT: Final = 60.0


class GraphvizError(RuntimeError):
    """Graphviz's ``dot`` failed to draw the diagram."""


class GraphvizUnavailable(GraphvizError):
    """Graphviz's ``dot`` program is not on PATH."""


# -- JSON ---------------------------------------------------------------------------------


def to_json(report: RoleReport) -> str:
    """The report as JSON (schema version :data:`SCHEMA_VERSION`; docs/role-report.md).

    Every dataclass becomes an object with the same field names, tuples
    become arrays, None becomes null. All roles are included, predefined
    ones with ``"predefined": true``.
    """
    return json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False) + "\n"


def report_from_json(text: str) -> RoleReport:
    """Read a report written by :func:`to_json` back.

    Raises:
        ValueError: not JSON, another schema version, or a field of the
            wrong type.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"not a role report of schema version {SCHEMA_VERSION}")
    result = _decode(RoleReport, data, "report")
    assert isinstance(result, RoleReport)
    return result


def _decode(kind: Any, value: object, where: str) -> object:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        item_type = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected an array")
        return tuple(_decode(item_type, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(kind)}")
        return value
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        hints = typing.get_type_hints(kind)
        arguments = {}
        for field in dataclasses.fields(kind):
            if field.name in value:
                arguments[field.name] = _decode(hints[field.name], value[field.name],
                                                f"{where}.{field.name}")
        try:
            return kind(**arguments)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if kind is bool or kind is str:
        if type(value) is not kind:
            raise ValueError(f"{where}: expected {kind.__name__}")
        return value
    if kind is int:
        if type(value) is not int:
            raise ValueError(f"{where}: expected an integer")
        return value
    raise ValueError(f"{where}: cannot read {kind!r}")


# -- Markdown -----------------------------------------------------------------------------

_MARKDOWN_SPECIAL: Final = frozenset("\\`*_[]|~")
#: Control characters and line or paragraph separators: shown as escapes.
_INVISIBLE: Final = frozenset({"Cc", "Zl", "Zp"})


def _md(text: str) -> str:
    """``text`` safe inside a Markdown table cell: no markup, no cell break."""
    out = []
    for char in text:
        if char in "\r\n\t":
            out.append(" ")
        elif char == "<":
            out.append("&lt;")
        elif char == "&":
            out.append("&amp;")
        elif char in _MARKDOWN_SPECIAL:
            out.append("\\" + char)
        elif unicodedata.category(char) in _INVISIBLE:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell or " " for cell in row) + " |" for row in rows)
    return lines


def _yes(flag: bool | None, unknown: str = "?") -> str:
    return unknown if flag is None else ("yes" if flag else "no")


def _chain(chain: Sequence[str] | None) -> str:
    return "" if chain is None else " → ".join(_md(name) for name in chain)


def _badges(role: RoleRow) -> list[str]:
    badges = ["LOGIN"] if role.login else []
    flags = (role.superuser, role.createrole, role.createdb, role.replication, role.bypassrls)
    badges += [name for name, held in zip(PRIVILEGED_ATTRIBUTES, flags, strict=True) if held]
    if not role.inherit:
        badges.append("NOINHERIT")
    return badges


def _visible(report: RoleReport) -> list[RoleRow]:
    return [r for r in report.roles if report.include_predefined or not r.predefined]


def to_markdown(report: RoleReport) -> str:
    """The report as a Markdown document (GitHub tables), for people and for review."""
    lines = ["# Role report", ""]
    version = report.server_version_num
    lines.append(f"- Server: PostgreSQL {version // 10000}.{version % 10000}"
                 if version is not None else "- Server: version unknown")
    if report.database is not None:
        lines.append(f"- Database: {_md(report.database)}")
    visible = _visible(report)
    logins = sum(1 for r in report.roles if r.login)
    lines.append(f"- Roles: {len(report.roles)} ({logins} LOGIN; "
                 f"{len(report.roles) - len(visible)} predefined not listed)")
    hidden = len(report.memberships) - len(_shown_memberships(report))
    lines.append(f"- Memberships: {len(report.memberships)}"
                 + (f" ({hidden} between predefined roles not listed)" if hidden else ""))
    counts = {s: sum(1 for w in report.warnings if w.severity == s) for s in SEVERITIES}
    lines.append("- Warnings: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES))
    if report.grant_options:
        lines.append("- Membership options: per grant (ADMIN, INHERIT, SET; PostgreSQL 16+)")
    else:
        lines.append("- Membership options: ADMIN only. This server has no per-grant "
                     "INHERIT or SET options (PostgreSQL 15 or older): every grant allows "
                     "SET ROLE, and privileges are inherited by members with the INHERIT "
                     "attribute.")
    lines += ["", "## Warnings", ""]
    if report.warnings:
        lines += _table(("severity", "code", "subject", "finding"),
                        ((w.severity, w.code, _md(w.subject), _md(w.message))
                         for w in report.warnings))
    else:
        lines.append("No warnings.")
    lines += ["", "## Roles", ""]
    lines += _table(("role", "attributes", "inherit", "connection limit", "password",
                     "valid until"),
                    ((_md(r.name) + (" (bootstrap superuser)" if r.bootstrap else ""),
                      " ".join(a for a in _badges(r) if a != "NOINHERIT") or "-",
                      _yes(r.inherit),
                      "none" if r.connection_limit < 0 else str(r.connection_limit),
                      {None: "unknown", True: "set", False: "none"}[r.password_set],
                      _md(r.valid_until) if r.valid_until is not None else "-")
                     for r in visible))
    lines += ["", "## Memberships", ""]
    if _shown_memberships(report):
        lines += _table(("member", "granted role", "admin", "inherit", "set", "grantor"),
                        _membership_cells(report))
    else:
        lines.append("No memberships.")
    lines += ["", "## What each login role reaches", ""]
    if not report.grant_options:
        lines += ["PostgreSQL 15: *SET ROLE* counts every grant; *inherits* follows members "
                  "with the INHERIT attribute.", ""]
    for login in report.reach:
        lines += _reach_section(login)
    if report.proxy is not None:
        lines += _proxy_section(report.proxy)
    return "\n".join(lines).rstrip() + "\n"


def _membership_cells(report: RoleReport) -> Iterable[Sequence[str]]:
    for m in _shown_memberships(report):
        if report.grant_options:
            inherit, settable = _yes(m.inherit_option, "-"), _yes(m.set_option, "-")
        else:
            inherit, settable = "n/a (PG15)", "n/a (PG15)"
        grantor = "implicit (database owner)" if m.implicit else _md(m.grantor or "-")
        yield (_md(m.member), _md(m.role), _yes(m.admin_option), inherit, settable, grantor)


def _reach_section(login: LoginReach) -> list[str]:
    lines = [f"### {_md(login.login)}", ""]
    if login.superuser:
        lines += ["SUPERUSER: may SET ROLE to every role and passes every permission check.",
                  ""]
    if not login.entries:
        lines += ["Member of no role.", ""]
        return lines
    lines += _table(("role", "SET ROLE", "inherits privileges", "attributes", "chain"),
                    ((_md(e.role), _yes(e.set_chain is not None),
                      _yes(e.inherit_chain is not None), " ".join(e.attributes) or "-",
                      _chain(e.set_chain or e.inherit_chain or e.member_chain))
                     for e in login.entries))
    return [*lines, ""]


def _proxy_section(proxy: ProxyReport) -> list[str]:
    lines = ["## Proxy mapping", ""]
    lines.append(f"- Middleware: {', '.join(_md(m) for m in proxy.middleware) or 'none'}")
    lines.append(f"- Authentication: {_md(proxy.auth)}"
                 + (f", upstream_user {_md(proxy.upstream_user)}" if proxy.upstream_user
                    else ""))
    rewrite = proxy.rewrite
    if rewrite is None:
        lines.append("- RoleRewrite: none (every client logs in upstream as itself)")
    else:
        login_role = f", login_role {_md(rewrite.login_role)}" if rewrite.login_role else ""
        unmapped = (f", unmapped = {rewrite.unmapped}"
                    if rewrite.mode in ("map", "set_role") else "")
        lines.append(f"- RoleRewrite: mode {rewrite.mode}{login_role}{unmapped}")
    guard = proxy.guard
    if guard is None:
        lines.append("- RoleGuard: none (the server alone decides SET ROLE)")
    else:
        lines.append(f"- RoleGuard: policy {guard.policy}; privileged roles: "
                     f"{', '.join(_md(r) for r in guard.privileged_roles) or 'none'}")
        for entry in guard.allow:
            lines.append(f"  - allow {_md(entry.key)}: "
                         f"{', '.join(_md(p) for p in entry.patterns)}")
    pool = proxy.pool
    if pool is None:
        lines.append("- Pool: none")
    else:
        lines.append(f"- Pool: {pool.mode} mode, max_size {pool.max_size}, reset "
                     f"{pool.reset}; a client's role change (session_state.role): "
                     f"{pool.role_state}")
    if rewrite is not None and rewrite.rules:
        lines += ["", "### Rules", ""]
        lines += _table(("#", "user pattern", "database", "role", "first match for"),
                        ((str(r.index), _md(r.user), _md(r.database or "any"), _md(r.role),
                          ", ".join(_md(m) for m in r.matches) or "-")
                         for r in rewrite.rules))
        fate = ("refused (FATAL 28000)" if rewrite.unmapped == "reject" else
                "logs in as itself" if rewrite.mode == "map" else "becomes itself")
        lines += ["", f"A startup user no rule matches is {fate}."]
    lines += ["", "### Startup users", ""]
    lines += _table(("startup user", "from", "database", "outcome", "upstream login",
                     "becomes", "by", "may switch to", "note"),
                    ((_md(m.startup_user), m.source, _md(m.database), m.outcome,
                      _md(m.upstream_login or "-"), _md(m.effective_role or "-"),
                      _md(m.rule or m.how), ", ".join(_md(r) for r in m.switch_to) or "-",
                      _md("; ".join(x for x in (m.note, m.switch_note) if x)))
                     for m in proxy.mappings))
    return [*lines, ""]


# -- Mermaid ------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    """Every character but ASCII letters, digits, space, ``_``, ``.`` and ``-`` as a
    ``#NNN;`` entity code: nothing in a role name can end a quoted label."""
    return "".join(char if (char.isascii() and char.isalnum()) or char in " _.-"
                   else f"#{ord(char)};" for char in text)


def _shown_memberships(report: RoleReport) -> list[MembershipRow]:
    """Memberships shown: all, or (without ``include_predefined``) those that
    involve a role that is not predefined (``pg_monitor`` -> ``pg_read_all_stats``
    is PostgreSQL's own business)."""
    return [m for m in report.memberships if report.include_predefined
            or not (m.role.startswith("pg_") and m.member.startswith("pg_"))]


def _graph_roles(report: RoleReport) -> list[RoleRow]:
    """Roles drawn: the visible ones plus every role named by a shown membership."""
    shown = _shown_memberships(report)
    named = {m.role for m in shown} | {m.member for m in shown}
    return [r for r in report.roles
            if report.include_predefined or not r.predefined or r.name in named]


def _privileged(role: RoleRow) -> bool:
    return role.superuser or role.bypassrls or role.createrole or role.replication


def _edge_label(m: MembershipRow, grant_options: bool) -> str:
    words = []
    if m.implicit:
        words.append("owner")
    if m.admin_option:
        words.append("ADMIN")
    if grant_options and m.inherit_option is False:
        words.append("NOINHERIT")
    if grant_options and m.set_option is False:
        words.append("NOSET")
    return " ".join(words)


def to_mermaid(report: RoleReport) -> str:
    """The role graph as a Mermaid flowchart: an arrow from member to granted role.

    Login roles are rounded, group roles square; each node shows its
    attributes; an edge says ADMIN, NOINHERIT or NOSET when the grant has
    them; roles with SUPERUSER, BYPASSRLS, CREATEROLE or REPLICATION are
    drawn in red.
    """
    roles = _graph_roles(report)
    ids = {role.name: f"r{index}" for index, role in enumerate(roles)}
    lines = ["flowchart LR"]
    for role in roles:
        label = _mermaid_text(role.name)
        badges = _badges(role)
        if badges:
            label += "<br/><small>" + " ".join(badges) + "</small>"
        if role.login:
            lines.append(f'    {ids[role.name]}("{label}")')
        else:
            lines.append(f'    {ids[role.name]}["{label}"]')
    for m in _shown_memberships(report):
        if m.member not in ids or m.role not in ids:
            continue
        label = _edge_label(m, report.grant_options)
        arrow = "-.->" if m.implicit else "-->"
        text = f'|"{_mermaid_text(label)}"|' if label else ""
        lines.append(f"    {ids[m.member]} {arrow}{text} {ids[m.role]}")
    lines.append("    classDef login fill:#e8f1ff,stroke:#3a6fb0")
    lines.append("    classDef group fill:#f4f4f4,stroke:#888")
    lines.append("    classDef privileged fill:#ffe5e5,stroke:#c00,stroke-width:3px")
    for name, members in (("privileged", [r for r in roles if _privileged(r)]),
                          ("login", [r for r in roles if r.login and not _privileged(r)]),
                          ("group", [r for r in roles if not r.login and not _privileged(r)])):
        if members:
            lines.append(f"    class {','.join(ids[r.name] for r in members)} {name}")
    return "\n".join(lines) + "\n"


# -- DOT and SVG --------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """A DOT quoted string showing ``text`` literally."""
    out = ['"']
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif unicodedata.category(char) in _INVISIBLE:
            code = f"x{ord(char):02x}" if ord(char) < 256 else f"u{ord(char):04x}"
            out.append("\\\\" + code)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def to_dot(report: RoleReport) -> str:
    """The role graph as Graphviz DOT text (same drawing rules as :func:`to_mermaid`)."""
    roles = _graph_roles(report)
    ids = {role.name: f"r{index}" for index, role in enumerate(roles)}
    lines = ["digraph roles {", '    graph [rankdir=LR, charset="UTF-8"];',
             '    node [fontname="Helvetica", fontsize=11];',
             '    edge [fontname="Helvetica", fontsize=9];']
    for role in roles:
        badges = " ".join(_badges(role))
        label = _dot_string(role.name)
        if badges:
            label = label[:-1] + "\\n" + badges + '"'
        shape = "ellipse" if role.login else "box"
        style = ('style=filled, fillcolor="#ffe5e5", color="#cc0000", penwidth=2'
                 if _privileged(role) else
                 'style=filled, fillcolor="#e8f1ff"' if role.login else
                 'style=filled, fillcolor="#f4f4f4"')
        lines.append(f"    {ids[role.name]} [label={label}, shape={shape}, {style}];")
    for m in _shown_memberships(report):
        if m.member not in ids or m.role not in ids:
            continue
        attributes = []
        label = _edge_label(m, report.grant_options)
        if label:
            attributes.append(f"label={_dot_string(label)}")
        if m.implicit:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {ids[m.member]} -> {ids[m.role]}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(report: RoleReport, *, timeout: float = DOT_TIMEOUT) -> bytes:
    """The role graph drawn as SVG by Graphviz (``dot -Tsvg``).

    Raises:
        GraphvizUnavailable: ``dot`` is not on PATH (install Graphviz, or use
            :func:`to_mermaid` / :func:`to_dot`).
        GraphvizError: ``dot`` failed or took longer than ``timeout`` seconds.
    """
    program = shutil.which("dot")
    if program is None:
        raise GraphvizUnavailable(
            "Graphviz's dot program is not on PATH: install Graphviz (apt-get install "
            "graphviz, brew install graphviz, ...) for SVG, or use --format mermaid or dot")
    try:
        result = subprocess.run([program, "-Tsvg"], input=to_dot(report).encode("utf-8"),
                                capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GraphvizError(f"dot took longer than {timeout:g} s") from None
    except OSError as exc:
        raise GraphvizError(f"cannot run {program}: {exc}") from None
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise GraphvizError(f"dot failed (exit {result.returncode}): {message}")
    return result.stdout
