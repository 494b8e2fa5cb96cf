"""A griffe extension that renders pgwire's reST-flavoured docstrings in MkDocs.

pgwire's docstrings are Google style (``Args:``, ``Raises:``) but name other
objects with Sphinx roles (:class:`Frontend`, :meth:`~TLSSession.read`) and
end literal-block introductions with ``::``. mkdocstrings reads Markdown, so
before rendering, this extension turns each role into inline code wrapped in
an *optional* cross-reference: a link when the target is documented on the
site, plain code (and no warning) when it is not. Only the rendered text
changes; the source docstrings stay as they are.

mkdocs.yml loads it by path (``extensions: [tools/griffe_sphinx_roles.py]``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

# :role:`target`, :role:`~target`, :role:`title <target>`
_ROLE = re.compile(r":(?:py:)?(?P<role>class|meth|func|mod|data|attr|exc|obj|const|ref):"
                   r"`(?P<body>[^`]+)`")
# A paragraph ending in "::" introduces an indented literal block (reST).
_LITERAL_INTRO = re.compile(r"(?m)^(?P<text>.*?\S)?(?P<sep>\s*)::[ \t]*$")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``, or None."""
    scopes: list[griffe.Object] = []
    current: griffe.Object | None = obj
    while current is not None:
        scopes.append(current)
        current = current.parent
    first, _, rest = target.partition(".")
    for scope in scopes:
        try:
            if first in scope.members:
                path = scope.members[first].path
                return f"{path}.{rest}" if rest else path
            resolved = scope.resolve(first) if hasattr(scope, "resolve") else None
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError,
                AttributeError):
            resolved = None
        if resolved:
            return f"{resolved}.{rest}" if rest else resolved
    return target if "." in target else None


def _render_role(obj: griffe.Object, match: re.Match[str]) -> str:
    role, body = match["role"], match["body"].strip()
    explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    else:
        target = body.lstrip("~")
        title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
    if role in ("meth", "func") and not title.endswith(")"):
        title += "()"
    code = f"<code>{html.escape(title)}</code>"
    path = _resolve(obj, target.rstrip("()"))
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def rewrite(obj: griffe.Object, text: str) -> str:
    """Return ``text`` with Sphinx roles and ``::`` literal intros made Markdown."""
    out: list[str] = []
    fence = False
    for original in text.split("\n"):
        if original.lstrip().startswith("```"):
            fence = not fence
        if fence:
            out.append(original)
            continue
        line = _ROLE.sub(lambda m: _render_role(obj, m), original)
        intro = _LITERAL_INTRO.fullmatch(line)
        if intro:
            line = f"{intro['text']}:" if intro["text"] else ""
        out.append(line)
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    stack.append(member)  # type: ignore[arg-type]
