"""The generated documentation pages match the code they are drawn from."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pgwire

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("tool", ["tools/state_diagram.py", "tools/message_reference.py"])
def test_generated_page_is_current(tool: str) -> None:
    result = subprocess.run(
        [sys.executable, tool, "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_is_documented() -> None:
    missing = [
        name
        for name in pgwire.__all__
        if callable(getattr(pgwire, name)) and not (getattr(pgwire, name).__doc__ or "").strip()
    ]
    assert missing == []


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    for target in ("docs/proxy.md", "docs/quickstart.md", "docs/scenarios.md",
                   "docs/role-report.md", "docs/testing.md", "examples/minimal_proxy.py"):
        assert target in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
    # Every page of the documentation is linked from the README.
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages - set(local) - {"docs/index.md"} == set()


def test_the_imports_in_the_docs_code_blocks_resolve() -> None:
    """Every ``from pgwire... import`` / ``import pgwire...`` line of a Python
    code block in docs/ names something that exists."""
    pattern = re.compile(r"```python\n(.*?)```", re.DOTALL)
    checked = 0
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in pattern.findall(page.read_text()):
            statements = re.findall(
                r"^(from pgwire[\w.]* import \(?[^)\n]*\)?|import pgwire[\w.]*)", block,
                re.MULTILINE)
            for statement in statements:
                if statement.startswith("import "):
                    importlib.import_module(statement.split()[1])
                else:
                    module, _, names = statement[5:].partition(" import ")
                    imported = importlib.import_module(module)
                    for entry in names.strip("()").split(","):
                        name = entry.split(" as ")[0].strip()
                        if name and not hasattr(imported, name):
                            importlib.import_module(f"{module}.{name}")  # a submodule
                checked += 1
    assert checked > 10
