"""Names re-exported from ``pgwire`` are visible to a type checker.

The package ships ``py.typed`` and promises ``import pgwire as pw;
pw.DataRow(...)``; users running ``mypy --strict`` must see the message
classes through the top-level package, not only through ``pgwire.protocol``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """\
import pgwire as pw

row: pw.DataRow = pw.DataRow(values=(b"1", None))
query = pw.Query(query="select 1")
ready = pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)
frontend: pw.Frontend = pw.Frontend(decode={b"Z"})
"""


def test_message_classes_type_check_through_the_top_level_package(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "-c", SNIPPET],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
