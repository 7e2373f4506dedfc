"""The running event loop, cheaply (the hot routes ask for it on every request)."""

from __future__ import annotations

import asyncio
import threading

_here = threading.local()


def running_loop() -> asyncio.AbstractEventLoop:
    """The event loop running in this thread (RuntimeError when none is):
    `asyncio.get_running_loop()` without its system call — Python 3.11's checks the process id
    with getpid() at every call, as does `asyncio.current_task()` without a loop."""
    loop: asyncio.AbstractEventLoop | None = getattr(_here, "loop", None)
    if loop is None or not loop.is_running():   # one loop runs in a thread at a time
        loop = _here.loop = asyncio.get_running_loop()
    return loop
