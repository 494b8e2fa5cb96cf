"""Start an example as a program, the way a reader would, and stop it with a signal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from tests.interop.proxy_wire import EXAMPLES, read_line

__all__ = ["running_example", "stop"]

ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PGCLIENTENCODING": "UTF8"}


@contextlib.contextmanager
def running_example(name: str, *argv: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``examples/<name>.py --listen 127.0.0.1:0 ARGV...``; yield it and its port,
    read from its first line. A process still running at the end is killed."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--listen", "127.0.0.1:0", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=ENV)
    try:
        match = read_line(process, r"listening on 127\.0\.0\.1:(\d+)")
        yield process, int(match.group(1))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[str, str]:
    """Send ``signum`` and wait for the process to exit; its remaining stdout and stderr."""
    process.send_signal(signum)
    return process.communicate(timeout=30)
