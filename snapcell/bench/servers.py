"""Servers the bench starts and stops: `snapcell serve` and other HTTP servers that print
their address first."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence


def start_serve(args: Sequence[str]) -> "tuple[subprocess.Popen[str], str]":
    """A `snapcell serve --port 0 ARGS` process on 127.0.0.1, healthy, and its URL (stop it
    with `stop_process`)."""
    import httpx
    proc, url = _listening([sys.executable, "-m", "snapcell", "serve", "--port", "0", *args],
                           "snapcell serve")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("snapcell serve did not become healthy")
            time.sleep(0.05)
    except BaseException:
        stop_process(proc)
        raise


def _listening(cmd: Sequence[str], what: str) -> "tuple[subprocess.Popen[str], str]":
    """Start `cmd`, a server that prints its http://127.0.0.1:PORT address first; (process,
    URL)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    m = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
    if m is None:
        stop_process(proc)
        raise RuntimeError(f"{what} did not start")
    return proc, m.group(0)


def stop_process(proc: "subprocess.Popen[str]", grace: float = 20) -> None:
    """Stop a process this program started (a `snapcell serve`): SIGTERM, then SIGKILL after
    `grace` seconds; waits for it either way."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
