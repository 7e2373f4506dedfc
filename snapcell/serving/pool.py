"""`SandboxPool`: ready sandboxes of one snapshot shared by asyncio callers.

Each sandbox lives on its own worker thread, which takes jobs from one bounded queue, runs them
(KVM_RUN releases the GIL; the event loop never waits on it) and hands the result back with
`call_soon_threadsafe`. After every job the worker restores the sandbox to the pool's snapshot,
so every call starts from the same state; a sandbox that cannot be restored is closed and
replaced. A full queue refuses new calls at once with `PoolFull`. A call's `timeout` covers the
time queued plus the time in the guest; cancelling the awaiting task (`asyncio` cancellation,
`wait_for`, a disconnected HTTP client) removes a queued job or kills the running guest call
through the sandbox's interrupt handle.

A short call skips the worker thread: when a sandbox is idle and no call waits, `call` runs
the guest call on the event loop's own thread (handing a job to a thread and its result back
costs two thread wake-ups, more than a small call), restores the sandbox and returns. Such a
call is speculative: it is killed at `inline_budget` seconds, or at its first host-function
call (before the host function runs), and then runs again from the snapshot on a worker as
usual — nothing of the first attempt is left (the sandbox was restored, no host function ran)
and the loop was held for at most about the budget. A function that called a host function,
or outlived the budget on the worker too (not a scheduling hiccup), then stays off the loop's
thread for a while (`INLINE_BACKOFF`: 10 ms, doubling at each such re-run in a row up to 5 s),
so a function that always does costs the loop little. `inline_budget=0` turns this off."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import (
    ArgumentError,
    ExecutionCancelled,
    ExecutionTimeout,
    PoolClosed,
    PoolFull,
    SnapcellError,
)
from ..machine.vmachine import forks
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, SandboxStatus, Snapshot
from ..sandbox.interrupt import install_signal
from .jobs import (
    WAITED,
    Job,
    JobState,
    check_timeout,
    execute,
    finish,
    kill,
    start,
)
from .metrics import PoolMetrics

__all__ = ["WAITED", "Job", "JobState", "SandboxPool", "check_timeout", "execute", "finish",
           "kill", "start"]


INLINE_BUDGET = 0.002       # seconds a call may run on the event loop's thread
INLINE_BACKOFF = (0.01, 5.0)    # seconds off the loop's thread after a re-run: first, most
RESTORE_WAIT = 0.001        # seconds an inline call waits for a worker restoring its sandbox
_RERUN = object()           # no inline attempt, or a stopped one: run the call on a worker
_OVERRAN = object()         # an inline attempt outlived the budget: run it on a worker


class _Deferred(Exception):
    """A host call of an inline attempt: the attempt is killed before the function runs."""


class SandboxPool:
    """`size` ready sandboxes made with `MultiUseSandbox.from_snapshot(snapshot,
    host_functions=..., config=...)`, shared by asyncio tasks::

        async with SandboxPool(snap, size=4, host_functions=funcs, max_queue=64) as pool:
            await pool.call("Add", 1, 2, timeout=1.0)
            await pool.map("Echo", [["a"], ["b"]])

    `max_queue` bounds the calls waiting for a sandbox (beyond it: `PoolFull`); `timeout` is the
    default per-call limit in seconds (None: no limit). `inline_budget`: seconds a call may
    run on the event loop's thread before it runs again on a worker (0: never; see the
    module). `metrics` (shared by several pools) and `name` (the `pool` label) are for the
    service."""

    def __init__(self, snapshot: Snapshot, size: int = 2, host_functions: HostFunctions | None = None,
                 max_queue: int = 64, *, config: SandboxConfiguration | None = None,
                 timeout: float | None = None, metrics: PoolMetrics | None = None,
                 name: str = "pool", inline_budget: float = INLINE_BUDGET) -> None:
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"expected a Snapshot, got {type(snapshot).__name__}")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1024:
            raise ArgumentError(f"size must be an int in [1, 1024], got {size!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ArgumentError(f"max_queue must be a non-negative int, got {max_queue!r}")
        self.snapshot = snapshot
        self.size = size
        self.max_queue = max_queue
        self.host_functions = host_functions if host_functions is not None else HostFunctions()
        if isinstance(inline_budget, bool) or not isinstance(inline_budget, (int, float)) \
                or not inline_budget >= 0:
            raise ArgumentError(f"inline_budget must be a number of seconds >= 0, got "
                                f"{inline_budget!r}")
        self.inline_budget = float(inline_budget)
        self._inline_thread: int | None = None      # the loop's thread, during an inline call
        self._inline_sb: MultiUseSandbox | None = None
        self._inline_deferred = False               # the inline call reached a host call
        self._inline_off: dict[str, float] = {}     # function → monotonic time inline resumes
        self._strikes: dict[str, int] = {}          # function → re-runs in a row
        # the sandboxes' host functions: the given ones, each first checking for an inline
        # attempt to stop (_guarded)
        self._guarded = HostFunctions.empty()
        for fname in self.host_functions:
            f = self.host_functions.get(fname)
            assert f is not None
            self._guarded.register(fname, self._guard(f.fn), signature=f.signature)
        self.config = config
        self.timeout = check_timeout(timeout)
        self.metrics = metrics if metrics is not None else PoolMetrics()
        self.name = name
        # SimpleQueue (C, unbounded) is markedly faster than queue.Queue; the bound is kept
        # with a count of waiting jobs under _stats
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting = 0
        self._threads: list[threading.Thread] = []
        # one sandbox per worker, each under its lock while a worker (or the loop's thread, for
        # an inline call) uses it
        self._slots: list[MultiUseSandbox | None] = []
        self._slot_locks: list[threading.Lock] = []
        self._restoring: list[bool] = []            # the slot's worker is restoring its sandbox
        self._busy = 0
        self._stats = threading.Lock()
        self._killer: concurrent.futures.ThreadPoolExecutor | None = None
        self._started = False
        self._closed = False
        self._start_lock: asyncio.Lock | None = None
        self._forks = forks()           # the process it serves (its threads do not fork)
        m = self.metrics
        self._m_errors = m.errors
        self._m_calls = m.calls
        self._m_fn: dict[str, Any] = {}                 # function → its labelled counter
        self._m_latency = m.latency.labels(name)
        self._m_rejected = m.rejected.labels(name)
        self._m_cancelled = m.cancelled.labels(name)
        self._m_replaced = m.replaced.labels(name)
        install_signal(config.interrupt_signal if config is not None else 0)

    # ---------------------------------------------------------------- state
    @property
    def queued(self) -> int:
        """Jobs waiting for a sandbox."""
        return self._waiting

    @property
    def idle(self) -> int:
        """Sandboxes started and not running a job."""
        return len(self._threads) - self._busy if self._started and not self._closed else 0

    @property
    def started(self) -> bool:
        """Whether the workers run."""
        return self._started

    def new_sandbox(self, snapshot: Snapshot | None = None) -> MultiUseSandbox:
        """A sandbox from the pool's snapshot (or `snapshot`) with the pool's host functions and
        configuration (blocking; used by workers and sessions)."""
        return MultiUseSandbox.from_snapshot(snapshot if snapshot is not None else self.snapshot,
                                             host_functions=self._guarded,
                                             config=self.config)

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, stopping an inline attempt instead when called from one."""
        get_ident = threading.get_ident

        def host(*args: Any) -> Any:
            if self._inline_thread == get_ident():
                sb = self._inline_sb
                if sb is not None:
                    self._inline_deferred = True
                    sb.interrupt_handle().kill()        # from inside the call: no wait
                raise _Deferred("re-run on a worker")
            return fn(*args)
        return host

    # ---------------------------------------------------------------- lifetime
    async def start(self) -> None:
        """Create the sandboxes (each on its worker thread) and wait until all are ready; the
        first failure (e.g. host functions that do not cover the snapshot's) is raised and the
        pool is closed."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        self._check_process()
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            loop = asyncio.get_running_loop()
            ready: list[concurrent.futures.Future[None]] = []
            self._killer = concurrent.futures.ThreadPoolExecutor(2, f"snapcell-{self.name}-kill")
            for i in range(self.size):
                f: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._slots.append(None)
                self._slot_locks.append(threading.Lock())
                self._restoring.append(False)
                t = threading.Thread(target=self._worker, args=(f, i), daemon=True,
                                     name=f"snapcell-{self.name}-{i}")
                ready.append(f)
                self._threads.append(t)
                t.start()
            self._started = True
            self.metrics.watch_pool(self.name, lambda: self.queued, lambda: self.idle)
            try:
                await asyncio.gather(*(asyncio.wrap_future(f, loop=loop) for f in ready))
            except BaseException:
                await self.close()
                raise

    def _check_process(self) -> None:
        """PoolClosed in a forked child: the workers (threads) and their sandboxes stayed in
        the parent, so a job queued here would wait forever."""
        if self._forks != forks():
            raise PoolClosed("this pool was made in another process (before a fork): its "
                             "worker threads and sandboxes are that process's; make pools in "
                             "the process that uses them")

    async def close(self) -> None:
        """Stop the workers after the jobs already queued, and close the sandboxes."""
        if self._closed:
            return
        self._closed = True
        self.metrics.unwatch_pool(self.name)
        threads = list(self._threads)
        if threads:
            def stop() -> None:
                for _ in threads:
                    self._queue.put(None)
                for t in threads:
                    t.join()
            await asyncio.get_running_loop().run_in_executor(None, stop)
        if self._killer is not None:
            self._killer.shutdown(wait=False)

    async def __aenter__(self) -> "SandboxPool":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- calls
    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Call guest function `name` on a sandbox in the snapshot's state; returns its result
        or raises what `MultiUseSandbox.call` raises, `PoolFull` (queue full, nothing ran),
        `ExecutionTimeout` (queued plus running longer than `timeout`) or `PoolClosed`."""
        if not self._started:
            await self.start()
        value: Any = _RERUN
        if self.inline_budget and not self._waiting:
            if self._closed:
                raise PoolClosed("the pool is closed")
            t = check_timeout(timeout) if timeout is not None else self.timeout
            start_at = time.monotonic()
            value = self._inline(name, args, t)
            if value is not _RERUN and value is not _OVERRAN:
                return value
            if t is not None:
                timeout = max(1e-6, t - (time.monotonic() - start_at))
        if value is _OVERRAN:
            job = self._submit(name, args, None, timeout)
            queued = time.monotonic()
            try:
                return await job.future
            except asyncio.CancelledError:
                self._abandon(job)
                raise
            finally:        # outlived the budget on a worker too: not a scheduling hiccup
                if time.monotonic() - queued >= self.inline_budget:
                    self._back_off(name)
        job = self._submit(name, args, None, timeout)
        try:
            return await job.future
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _inline(self, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """The call on this (the loop's) thread if a sandbox is idle and `name` is not backing
        off: its result (or what it raises), or _RERUN / _OVERRAN (nothing of it is left: use
        a worker)."""
        if not isinstance(name, str) or self._inline_off.get(name, 0.0) > time.monotonic():
            return _RERUN
        self._check_process()
        for slot, lock in enumerate(self._slot_locks):
            # a worker that only restores its sandbox is waited for (tens of microseconds)
            if lock.acquire(False) or (self._restoring[slot] and lock.acquire(timeout=RESTORE_WAIT)):
                sb = self._slots[slot]
                if sb is not None:
                    break
                lock.release()
        else:
            return _RERUN
        budget = self.inline_budget if timeout is None else min(self.inline_budget, timeout)
        final = timeout is not None and budget >= timeout       # the budget is its own limit
        submitted = time.perf_counter()
        try:
            self._inline_sb, self._inline_thread = sb, threading.get_ident()
            self._inline_deferred = False
            try:
                value, ok = sb.call(name, *args, timeout=budget), True
            except ExecutionCancelled as e:     # the budget passed, or a host call came
                if self._inline_deferred:
                    value, ok = _RERUN, True
                elif not (final and isinstance(e, ExecutionTimeout)):
                    value, ok = _OVERRAN, True
                else:
                    value, ok = e, False
            except BaseException as e:          # the caller's
                value, ok = e, False
            finally:
                self._inline_sb = self._inline_thread = None
            if value is _RERUN and self._inline_deferred:      # it calls host functions
                self._back_off(name)
            elif value is not _OVERRAN:
                self._strikes.pop(name, None)
        finally:
            self._slots[slot] = self._reset(sb)
            lock.release()
        if value is not _RERUN and value is not _OVERRAN:
            self._count(name, submitted, ok, value)
        if not ok:
            raise value
        return value

    def _back_off(self, name: str) -> None:
        """Keep `name` off the loop's thread for a while: twice as long at each re-run in a row
        (from INLINE_BACKOFF[0] up to INLINE_BACKOFF[1] seconds)."""
        n = self._strikes[name] = self._strikes.get(name, 0) + 1
        first, most = INLINE_BACKOFF
        self._inline_off[name] = time.monotonic() + min(most, first * 2 ** min(n - 1, 30))


    async def map(self, name: str, items: Iterable[Sequence[Any]], *, timeout: float | None = None,
                  chunk_size: int | None = None) -> list[Any]:
        """`call_many` over the pool: `items` (argument lists) are split into chunks of
        `chunk_size` (default: spread over the pool's sandboxes), each chunk one batched job
        (one VM entry for many calls). Returns one result per item in order; a guest error of an
        item is returned in its place as a `GuestError` instance. Within a chunk, items run one
        after another on one sandbox (state carries over); every chunk starts from the
        snapshot."""
        batch = [list(a) if not isinstance(a, list) else a for a in items]
        if not batch:
            return []
        if chunk_size is None:
            chunk_size = -(-len(batch) // self.size)
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ArgumentError(f"chunk_size must be a positive int, got {chunk_size!r}")
        chunks = [batch[i:i + chunk_size] for i in range(0, len(batch), chunk_size)]
        if not self._started:
            await self.start()
        jobs: list[Job] = []
        try:
            for c in chunks:
                jobs.append(self._submit(name, None, c, timeout))
            parts = await asyncio.gather(*(self._wait(j) for j in jobs))
        except BaseException:
            for j in jobs:
                self._abandon(j)
            raise
        out: list[Any] = []
        for p in parts:
            out.extend(p)
        return out

    async def run(self, code: str, *, lang: str | None = None,
                  files: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        """Run source code in a fresh code sandbox through the registered code-sandbox backend
        (`snapcell.serving.code`, shared by every pool; this pool's own sandboxes run guest
        functions). Raises `CodeSandboxUnavailable` while no backend is installed — the case in
        this build."""
        from .code import shared_pool
        return await shared_pool().run(code, lang=lang, files=files,
                                       timeout=timeout if timeout is not None else self.timeout)

    def _submit(self, name: str, args: tuple[Any, ...] | None,
                items: Sequence[Sequence[Any]] | None, timeout: float | None) -> Job:
        """Queue a job (the pool is started); PoolFull when it may not wait."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        self._check_process()
        if not isinstance(name, str):
            raise ArgumentError(f"function name must be a str, got {type(name).__name__}")
        t = check_timeout(timeout) if timeout is not None else self.timeout
        with self._stats:
            # a job may wait when a worker is free or the queue has room
            full = self._waiting >= self.max_queue + len(self._threads) - self._busy
            if not full:
                self._waiting += 1
        if full:
            self._m_rejected.inc()
            raise PoolFull(f"pool {self.name!r} is full: {self.size} sandbox(es) busy and "
                           f"{self.max_queue} call(s) queued; retry later")
        job = Job(asyncio.get_running_loop(), name, args, items,
                  None if t is None else time.monotonic() + t)
        job.release = self._release
        self._queue.put(job)
        return job

    def _release(self, outcome: str) -> None:
        """A job left the queue: it runs now (a worker is busy), or it was dropped."""
        with self._stats:
            self._waiting -= 1
            if outcome == "run":
                self._busy += 1
        if outcome == "expired":
            self._m_errors.labels(self.name, ExecutionTimeout.__name__).inc()

    async def _wait(self, job: Job) -> Any:
        try:
            return await job.future
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _abandon(self, job: Job) -> None:
        """The caller no longer waits: drop the job if queued, kill its guest call if running."""
        with job.lock:
            state = job.state
            if state is JobState.QUEUED:
                job.state = JobState.CANCELLED
        if state is JobState.QUEUED:
            self._release("cancelled")
            self._m_cancelled.inc()
            return
        if state is JobState.RUNNING and not job.finished and self._killer is not None:
            self._m_cancelled.inc()
            try:
                self._killer.submit(kill, job)
            except RuntimeError:        # shutting down: the worker finishes the call itself
                pass

    # ---------------------------------------------------------------- workers
    def _worker(self, ready: concurrent.futures.Future[None], slot: int) -> None:
        lock = self._slot_locks[slot]
        error: BaseException | None = None
        with lock:
            try:
                self._slots[slot] = self.new_sandbox()
            except BaseException as e:
                error = e
        if error is not None:
            ready.set_exception(error)
        else:
            ready.set_result(None)
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                break
            with lock:                             # (held briefly by an inline call)
                sb = self._slots[slot]
                if not start(job, sb):             # dropped while queued (already released)
                    continue
                if sb is None:                     # the last creation failed: try again
                    try:
                        sb = job.sandbox = self.new_sandbox()
                    except BaseException as e:
                        self._record(job, False, e)
                        finish(job, False, e)
                if sb is not None:
                    execute(job, sb, self._record)
                self._restoring[slot] = True
                self._slots[slot] = self._reset(sb)
                self._restoring[slot] = False
            with self._stats:
                self._busy -= 1
        with lock:
            sb, self._slots[slot] = self._slots[slot], None
        if sb is not None:
            sb.close()

    def _record(self, job: Job, ok: bool, value: Any) -> None:
        self._count(job.name, job.submitted, ok, value)

    def _count(self, name: str, submitted: float, ok: bool, value: Any) -> None:
        """The metrics of a call of `name` submitted at `submitted` (perf_counter)."""
        counter = self._m_fn.get(name)
        if counter is None:
            fn = name if name in (self.snapshot.functions or ()) else "(unknown)"
            counter = self._m_calls.labels(self.name, fn)   # bounded: the guest's functions
            if fn == name:
                self._m_fn[fn] = counter
        counter.inc()
        self._m_latency.observe(time.perf_counter() - submitted)
        if not ok:
            self._m_errors.labels(self.name, type(value).__name__).inc()

    def _reset(self, sb: MultiUseSandbox | None) -> MultiUseSandbox | None:
        """Back to the snapshot's state (also clears poison); replace the sandbox if that fails."""
        if sb is None:
            return None
        try:
            sb.restore(self.snapshot)
            if sb.status is SandboxStatus.READY:
                return sb
        except SnapcellError:
            pass
        sb.close()
        self._m_replaced.inc()
        try:
            return self.new_sandbox()
        except SnapcellError:
            return None                             # retried on the next job

    def __repr__(self) -> str:
        return (f"<SandboxPool {self.name!r} size={self.size} idle={self.idle} "
                f"queued={self.queued} max_queue={self.max_queue}>")
