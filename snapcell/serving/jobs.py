"""Jobs of `SandboxPool` and sessions: one call or batch handed to a worker thread, its state
(queued, running, done, cancelled), its deadline while queued, the hand-back of its outcome
to the caller's event loop, and killing its guest call from another thread."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ArgumentError, ExecutionTimeout
from ..sandbox import MultiUseSandbox


class JobState(enum.Enum):
    """Where a job is: waiting, on a worker, finished, or dropped before it ran."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class Job:
    """One unit of work for a worker: a call (`args` is a tuple) or a batch (`items` a list)."""

    __slots__ = ("name", "args", "items", "deadline", "future", "loop", "state", "lock",
                 "sandbox", "finished", "submitted", "timer", "release")

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, args: tuple[Any, ...] | None,
                 items: Sequence[Sequence[Any]] | None, deadline: float | None) -> None:
        self.loop = loop
        self.name = name
        self.args = args
        self.items = items
        self.deadline = deadline
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = JobState.QUEUED
        self.lock = threading.Lock()
        self.sandbox: MultiUseSandbox | None = None
        self.finished = False           # set (without the lock) as soon as the guest call ended
        self.submitted = time.perf_counter()
        # called once when the job leaves QUEUED (the pool's queue accounting), with "run",
        # "cancelled" (its caller gave up) or "expired" (its deadline passed)
        self.release: Callable[[str], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        if deadline is not None:        # a job still queued at its deadline fails then
            self.timer = loop.call_at(loop.time() + (deadline - time.monotonic()), _expire, self)

    def run(self, sb: MultiUseSandbox) -> Any:
        """Run on `sb` (worker thread) with what is left of the deadline."""
        remaining = None
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionTimeout(WAITED)
        if self.items is not None:
            return sb.call_many(self.name, self.items, timeout=remaining)
        assert self.args is not None
        return sb.call(self.name, *self.args, timeout=remaining)


WAITED = "the call's time limit passed while it waited for a sandbox"


def _expire(job: Job) -> None:
    """The deadline passed (event loop): a job still queued is dropped and fails now; a running
    one is the watchdog's to kill."""
    with job.lock:
        if job.state is not JobState.QUEUED:
            return
        job.state = JobState.CANCELLED
    if job.release is not None:
        job.release("expired")
    if not job.future.done():
        job.future.set_exception(ExecutionTimeout(WAITED))


def _deliver(job: Job, ok: bool, value: Any) -> None:
    """Resolve the job's future on the event loop (unless its caller gave up)."""
    if job.timer is not None:
        job.timer.cancel()
    fut = job.future
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def execute(job: Job, sb: MultiUseSandbox,
            record: Callable[[Job, bool, Any], None] | None = None) -> tuple[bool, Any]:
    """Run a job marked RUNNING on `sb` (worker thread), deliver its outcome, then `record` it
    (metrics: off the caller's path, but before the worker takes another job)."""
    try:
        value = job.run(sb)
        ok = True
    except BaseException as e:  # delivered to the caller
        value, ok = e, False
    finish(job, ok, value)
    if record is not None:
        record(job, ok, value)
    return ok, value


def finish(job: Job, ok: bool, value: Any) -> None:
    """Mark the job done (after any killer still deciding) and hand the outcome to its loop."""
    job.finished = True
    with job.lock:
        job.state = JobState.DONE
    try:
        job.loop.call_soon_threadsafe(_deliver, job, ok, value)
    except RuntimeError:        # the caller's event loop is closed: nobody waits any more
        pass


def start(job: Job, sb: MultiUseSandbox | None) -> bool:
    """Mark a job RUNNING on `sb`; False when its caller gave up while it was queued."""
    with job.lock:
        if job.state is JobState.CANCELLED:
            return False
        job.state = JobState.RUNNING
        job.sandbox = sb
    if job.release is not None:
        job.release("run")
    return True


def kill(job: Job) -> None:
    """Kill the job's guest call (killer thread). The job's lock is held throughout, so its
    worker cannot finish the job and start another call that a late kill would hit; kills are
    retried while the job runs outside a VM entry (before its first one, or between the
    entries of a batch)."""
    with job.lock:
        sb = job.sandbox
        if job.state is not JobState.RUNNING or sb is None:
            return
        handle = sb.interrupt_handle()
        while not job.finished:
            if handle.kill():
                return
            time.sleep(0.0002)


def check_timeout(timeout: float | None) -> float | None:
    """A positive number of seconds or None; ArgumentError otherwise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
