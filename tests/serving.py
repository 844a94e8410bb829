"""`paidan serve` as a child process for the tests that need the whole service."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def start_serve(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """Start `paidan serve` with `env`; returns the process, its web base URL (read from the log line
    that names the bound port, so port 0 works) and the log lines, which keep filling in (until
    `whole_log` after the process ended)."""
    proc = subprocess.Popen([sys.executable, "-m", "paidan.cli", "serve"], cwd=cwd, env=env,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if found := re.search(r"serving http://([\d.]+):(\d+)", line):
            proc.log_reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
            proc.log_reader.start()
            return proc, f"http://{found.group(1)}:{found.group(2)}", lines
    proc.kill()
    raise AssertionError("paidan serve did not start:\n" + "".join(lines))


def whole_log(proc: subprocess.Popen, lines: list[str], seconds: float = 30) -> str:
    """The log of a `start_serve` process that has ended, to its last line: the reader thread reaches the
    end of stderr a moment after the process exits (a fixed sleep is too short on a loaded machine)."""
    proc.log_reader.join(seconds)
    return "".join(lines)


def wait_for(condition, what: str, log_lines: list[str] | None = None, seconds: float = 30):
    """`condition()`'s first truthy value, polled every 0.1 s; after `seconds`, fail with the server's log."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if found := condition():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + ("\n" + "".join(log_lines) if log_lines else ""))
