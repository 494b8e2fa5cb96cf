"""The results of ``pgwire check``: a plain-text table and JUnit XML."""

from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ._run import Result

__all__ = ["FileResults", "format_progress", "format_summary", "format_table", "junit_xml",
           "write_junit_xml"]

_NAME_WIDTH: Final = 60
#: Characters XML 1.0 cannot hold, even escaped.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(slots=True, kw_only=True)
class FileResults:
    """The results of one scenario file, with every adapter and client it ran with."""

    source: str
    results: list[Result]
    #: When the runs began (UTC), for JUnit.
    started: datetime


def format_progress(done: int, total: int, result: Result, *, show_client: bool) -> str:
    """``[3/12] asyncio  alice maps to reporting ... ok (0.04 s)``."""
    width = len(str(total))
    client = f" {result.client:<7}" if show_client else ""
    verdict = "ok" if result.passed else "FAILED"
    return (f"[{done:>{width}}/{total}] {result.adapter:<8}{client} {result.scenario} ... "
            f"{verdict} ({result.seconds:.2f} s)")


def format_table(files: Sequence[FileResults], *, only_failed: bool = False) -> str:
    """One row per result: scenario, adapter (client, file when several), result,
    and the first failed expectation (its key, what was expected, what happened)."""
    show_file = len(files) > 1
    show_client = len({r.client for f in files for r in f.results}) > 1
    header = (["file"] if show_file else []) + ["scenario", "adapter"] + (
        ["client"] if show_client else []) + ["result", "detail"]
    rows: list[list[str]] = []
    for item in files:
        for result in item.results:
            if only_failed and result.passed:
                continue
            name = result.scenario
            if len(name) > _NAME_WIDTH:
                name = name[:_NAME_WIDTH - 3] + "..."
            rows.append(([item.source] if show_file else []) + [name, result.adapter] + (
                [result.client] if show_client else []) + [
                "ok" if result.passed else "FAILED",
                "" if result.failure is None else str(result.failure)])
    widths = [max(len(line[column]) for line in [header, *rows])
              for column in range(len(header) - 1)]
    lines = []
    for line in [header, ["-" * w for w in widths] + ["-" * len("detail")], *rows]:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(lines)


def format_summary(files: Sequence[FileResults], seconds: float) -> str:
    """``3 passed, 1 failed in 2.10 s``."""
    results = [r for f in files for r in f.results]
    failed = sum(1 for r in results if not r.passed)
    passed = len(results) - failed
    parts = [f"{passed} passed"] + ([f"{failed} failed"] if failed else [])
    return f"{', '.join(parts)} in {seconds:.2f} s"


def _xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def junit_xml(files: Sequence[FileResults]) -> ET.Element:
    """JUnit XML (the ``<testsuites>`` root): a ``<testsuite>`` per file and adapter (and client), a
    ``<testcase>`` per scenario, a ``<failure>`` with the expectation that failed."""
    root = ET.Element("testsuites", name="pgwire check")
    host = socket.gethostname()
    totals = [0, 0, 0.0]
    show_client = len({r.client for f in files for r in f.results}) > 1
    for item in files:
        groups: dict[tuple[str, str], list[Result]] = {}
        for result in item.results:
            groups.setdefault((result.adapter, result.client), []).append(result)
        stem = Path(item.source).stem or "scenarios"
        for (adapter, client), results in groups.items():
            label = f"{adapter}, {client}" if show_client else adapter
            failures = sum(1 for r in results if not r.passed)
            seconds = sum(r.seconds for r in results)
            suite = ET.SubElement(root, "testsuite", {
                "name": _xml_text(f"{item.source} [{label}]"),
                "tests": str(len(results)), "failures": str(failures), "errors": "0",
                "skipped": "0", "time": f"{seconds:.3f}",
                "timestamp": item.started.strftime("%Y-%m-%dT%H:%M:%S"), "hostname": host})
            properties = ET.SubElement(suite, "properties")
            for name, value in (("file", item.source), ("adapter", adapter),
                                ("client", client)):
                ET.SubElement(properties, "property", name=name, value=_xml_text(value))
            classname = f"{stem}.{adapter}" + (f".{client}" if show_client else "")
            for result in results:
                case = ET.SubElement(suite, "testcase", {
                    "classname": _xml_text(classname), "name": _xml_text(result.scenario),
                    "time": f"{result.seconds:.3f}"})
                if result.failure is not None:
                    failure = ET.SubElement(case, "failure", {
                        "message": _xml_text(str(result.failure)),
                        "type": "ExpectationFailed"})
                    failure.text = _xml_text(
                        f"{result.key} ({item.source}, {result.scenario}):\n"
                        f"  key:      {result.failure.key}\n"
                        f"  expected: {result.failure.expected}\n"
                        f"  actual:   {result.failure.actual}\n")
            totals[0] += len(results)
            totals[1] += failures
            totals[2] += seconds
    root.set("tests", str(int(totals[0])))
    root.set("failures", str(int(totals[1])))
    root.set("errors", "0")
    root.set("time", f"{totals[2]:.3f}")
    ET.indent(root)
    return root


def write_junit_xml(files: Sequence[FileResults], path: str | os.PathLike[str]) -> None:
    """Write :func:`junit_xml` to ``path`` (UTF-8, with an XML declaration)."""
    ET.ElementTree(junit_xml(files)).write(path, encoding="utf-8", xml_declaration=True)


def now() -> datetime:
    """The time in UTC, for :attr:`FileResults.started`."""
    return datetime.now(UTC)
