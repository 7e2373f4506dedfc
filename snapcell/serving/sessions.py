"""Stateful sessions: one sandbox per session whose state persists from call to call.

A session starts from its pool's snapshot. When it has been idle for `idle_seconds` the manager
pauses it: its state becomes an in-memory `Snapshot` and its VM is released; the next call
resumes it with `from_snapshot` (tens of microseconds). A call that poisons the sandbox (fault,
abort, timeout, cancellation) puts the session back at its last checkpoint — the state of its
last pause, or the pool's snapshot — and the error says so. Calls of one session run one at a
time; sessions run on a shared worker-thread executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError, PoolClosed, PoolFull, SessionNotFound
from ..sandbox import MultiUseSandbox, SandboxStatus, Snapshot
from .metrics import PoolMetrics
from .pool import Job, JobState, SandboxPool, check_timeout, execute, finish, kill, start

log = logging.getLogger("snapcell.serving")


class Session:
    """A sandbox of `pool`'s snapshot owned by `tenant`. Use through `SessionManager`."""

    def __init__(self, manager: "SessionManager", pool: SandboxPool, tenant: str) -> None:
        self.id = manager.id_prefix + secrets.token_urlsafe(18)
        self.tenant = tenant
        self.pool = pool
        self.manager = manager
        self.created = time.time()
        self.last_used = time.monotonic()
        self.calls = 0
        self._sb: MultiUseSandbox | None = None
        self._checkpoint: Snapshot = pool.snapshot
        self._thread_lock = threading.Lock()     # one call (or pause) at a time on the sandbox
        self._closed = False
        self.resets = 0

    @property
    def state(self) -> str:
        """"active" (has a VM), "paused" (state held as a snapshot) or "closed"."""
        if self._closed:
            return "closed"
        return "active" if self._sb is not None else "paused"

    def describe(self) -> dict[str, Any]:
        """JSON summary."""
        return {"id": self.id, "snapshot": self.pool.name, "state": self.state,
                "calls": self.calls, "resets": self.resets, "created": self.created,
                "idle_seconds": round(time.monotonic() - self.last_used, 3)}

    # ---------------------------------------------------------------- worker side
    def _ensure(self) -> MultiUseSandbox:
        if self._sb is None:
            self._sb = self.pool.new_sandbox(self._checkpoint)
        return self._sb

    def _run(self, job: Job) -> None:
        with self._thread_lock:
            if self._closed:
                if start(job, None):
                    finish(job, False, PoolClosed("the session is closed"))
                return
            try:
                sb = self._ensure()
            except BaseException as e:
                if start(job, None):
                    finish(job, False, e)
                return
            if not start(job, sb):
                return
            execute(job, sb)
            if sb.status is SandboxStatus.POISONED:      # not for a timeout while waiting
                self.resets += 1
                try:
                    sb.restore(self._checkpoint)
                except Exception:
                    sb.close()
                    self._sb = None

    def _pause(self) -> bool:
        with self._thread_lock:
            sb = self._sb
            if sb is None or self._closed:
                return False
            self._checkpoint = sb.snapshot()
            sb.close()
            self._sb = None
            return True

    def _close(self) -> None:
        with self._thread_lock:
            self._closed = True
            if self._sb is not None:
                self._sb.close()
                self._sb = None

    # ---------------------------------------------------------------- loop side
    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Call `name` in this session's state (kept for the next call)."""
        return await self._submit(name, args, None, timeout)

    async def call_many(self, name: str, items: Sequence[Sequence[Any]], *,
                        timeout: float | None = None) -> list[Any]:
        """A batch in this session's state."""
        return await self._submit(name, None, items, timeout)  # type: ignore[no-any-return]

    async def _submit(self, name: str, args: tuple[Any, ...] | None,
                      items: Sequence[Sequence[Any]] | None, timeout: float | None) -> Any:
        if self._closed:
            raise PoolClosed("the session is closed")
        t = check_timeout(timeout) if timeout is not None else self.pool.timeout
        loop = asyncio.get_running_loop()
        mgr = self.manager
        if mgr.pending >= mgr.workers + mgr.max_queue:
            raise PoolFull(f"{mgr.pending} session calls are running or waiting; retry later")
        job = Job(loop, name, args, items, None if t is None else time.monotonic() + t)
        self.last_used = time.monotonic()
        self.calls += 1
        mgr.pending += 1
        try:
            mgr._executor.submit(self._run, job)
        except BaseException:
            mgr.pending -= 1
            raise
        job.future.add_done_callback(lambda _: mgr._done())
        try:
            return await job.future
        except asyncio.CancelledError:
            with job.lock:
                if job.state is JobState.QUEUED:
                    job.state = JobState.CANCELLED
                    raise
            self.manager._executor.submit(kill, job)
            raise
        finally:
            self.last_used = time.monotonic()


def session_prefix(worker: int) -> str:
    """The start of the ids of sessions owned by worker `worker` of `serve --workers N`
    ("w<N>." — a dot is not in a token's alphabet)."""
    return f"w{worker}."


def session_owner(session_id: str) -> int | None:
    """The worker a session id names (`session_prefix`), or None."""
    head, dot, _ = session_id.partition(".")
    if not dot or not head.startswith("w") or not head[1:].isdigit() or len(head) > 8:
        return None
    return int(head[1:])


class SessionManager:
    """Sessions by id, at most `max_sessions` (and `max_per_tenant` per tenant), paused after
    `idle_seconds` by `sweep()` (run periodically by `run_sweeper()`). Session calls run on
    `workers` threads; beyond `max_queue` waiting calls, new ones get `PoolFull`. Ids start
    with `id_prefix` (the owning worker's `session_prefix` under `serve --workers N`)."""

    def __init__(self, *, metrics: PoolMetrics | None = None, idle_seconds: float = 60.0,
                 max_sessions: int = 256, max_per_tenant: int = 32, workers: int = 4,
                 max_queue: int = 64, id_prefix: str = "") -> None:
        if not idle_seconds > 0:
            raise ArgumentError("idle_seconds must be positive")
        self.metrics = metrics if metrics is not None else PoolMetrics()
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self.max_per_tenant = max_per_tenant
        self.id_prefix = id_prefix          # names the worker process owning the session
        self._sessions: dict[str, Session] = {}
        self.workers = workers
        self.max_queue = max_queue          # session calls that may wait for a worker thread
        self.pending = 0                    # session calls submitted and not finished
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, "snapcell-session")
        self._gauge_active = self.metrics.sessions.labels("active")
        self._gauge_paused = self.metrics.sessions.labels("paused")

    def _done(self) -> None:
        self.pending -= 1

    def _update_gauges(self) -> None:
        active = sum(1 for s in self._sessions.values() if s.state == "active")
        self._gauge_active.set(active)
        self._gauge_paused.set(len(self._sessions) - active)

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, pool: SandboxPool, tenant: str) -> Session:
        """A new session of `pool`'s snapshot (PoolFull beyond the limits). Its sandbox is
        created on the first call."""
        if len(self._sessions) >= self.max_sessions:
            raise PoolFull(f"the service holds its maximum of {self.max_sessions} sessions")
        mine = sum(1 for s in self._sessions.values() if s.tenant == tenant)
        if mine >= self.max_per_tenant:
            raise PoolFull(f"tenant {tenant!r} holds its maximum of {self.max_per_tenant} sessions")
        s = Session(self, pool, tenant)
        self._sessions[s.id] = s
        self._update_gauges()
        return s

    def get(self, session_id: str, tenant: str) -> Session:
        """The session, if it exists and is `tenant`'s (SessionNotFound otherwise: another
        tenant's session is indistinguishable from a missing one)."""
        s = self._sessions.get(session_id)
        if s is None or s.tenant != tenant:
            raise SessionNotFound(f"no session {session_id[:64]!r}")
        return s

    def of_tenant(self, tenant: str) -> list[Session]:
        """The tenant's sessions."""
        return [s for s in self._sessions.values() if s.tenant == tenant]

    async def delete(self, session_id: str, tenant: str) -> None:
        """Close and forget a session."""
        s = self.get(session_id, tenant)
        del self._sessions[session_id]
        await asyncio.get_running_loop().run_in_executor(self._executor, s._close)
        self._update_gauges()

    async def pause(self, session: Session) -> bool:
        """Pause one session now (True if it had a VM)."""
        done = await asyncio.get_running_loop().run_in_executor(self._executor, session._pause)
        self._update_gauges()
        return done

    async def sweep(self) -> int:
        """Pause every session idle for `idle_seconds`; returns how many were paused."""
        now = time.monotonic()
        idle = [s for s in self._sessions.values()
                if s.state == "active" and now - s.last_used >= self.idle_seconds]
        n = 0
        for s in idle:
            try:
                if await self.pause(s):
                    n += 1
            except Exception as e:     # the session stays active; the sweeper goes on
                log.warning("cannot pause session %s: %s: %s", s.id, type(e).__name__, e)
        return n

    async def run_sweeper(self, interval: float | None = None) -> None:
        """Sweep forever (cancel the task to stop)."""
        every = interval if interval is not None else max(0.05, min(self.idle_seconds / 4, 5.0))
        while True:
            await asyncio.sleep(every)
            await self.sweep()

    async def close(self) -> None:
        """Close every session."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        loop = asyncio.get_running_loop()
        for s in sessions:
            await loop.run_in_executor(self._executor, s._close)
        self._executor.shutdown(wait=False)
        self._update_gauges()
