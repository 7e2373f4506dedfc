"""`SandboxPool`: a bounded, thread-safe, synchronous pool of warm sandboxes for one snapshot.

Dask runs tasks on worker threads; each task leases one sandbox for the items of its chunk and
gives it back. After every item the sandbox is reset to the snapshot (so the next item runs on
fresh snapshot state); a sandbox whose reset fails is closed and replaced by a new one on the
next lease. At most `size` sandboxes exist at a time; a lease beyond that waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from ..errors import ConfigurationError, SandboxStateError

T = TypeVar("T")


class SandboxPool(Generic[T]):
    """Up to `size` sandboxes made by `create`, reset by `reset` after every use and closed by
    `close` when replaced or when the pool closes."""

    def __init__(self, create: Callable[[], T], reset: Callable[[T], None],
                 close: Callable[[T], None], size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"pool size must be a positive int, got {size!r}")
        self._create, self._reset, self._close = create, reset, close
        self.size = size
        self._idle: list[T] = []
        self._count = 0                 # sandboxes that exist (idle + leased + being created)
        self._cond = threading.Condition()
        self._closed = False
        self.created = 0                # counters (read without the lock: for stats only)
        self.replaced = 0
        self.leases = 0
        self.last_used = time.monotonic()

    # ---------------------------------------------------------------- leasing
    def acquire(self, timeout: float | None = None) -> T:
        """An idle sandbox, a new one while fewer than `size` exist, else wait for one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxStateError("the sandbox pool is closed")
                if self._idle:
                    self.leases += 1
                    self.last_used = time.monotonic()
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise SandboxStateError(f"no sandbox became free within {timeout} s")
                self._cond.wait(left)
        try:
            sb = self._create()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.created += 1
            self.leases += 1
            self.last_used = time.monotonic()
        return sb

    def reset(self, sb: T) -> bool:
        """Reset a leased sandbox to the snapshot. False when that failed: the sandbox is then
        closed and no longer counts (lease a new one)."""
        try:
            self._reset(sb)
            return True
        except Exception:
            self._discard(sb)
            self.replaced += 1
            return False

    def release(self, sb: T) -> None:
        """Give back a leased sandbox (already reset)."""
        with self._cond:
            if not self._closed:
                self._idle.append(sb)
                self._cond.notify()
                return
            self._count -= 1
        self._close(sb)

    def discard(self, sb: T) -> None:
        """Close a leased sandbox instead of giving it back (its state is unknown)."""
        self._discard(sb)

    def _discard(self, sb: T) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()
        try:
            self._close(sb)
        except Exception:   # closing a broken sandbox must not mask the error being handled
            pass

    @contextmanager
    def lease(self) -> Iterator["Lease[T]"]:
        """``with pool.lease() as lease: lease.sandbox ...; lease.reset()``: the sandbox goes
        back to the pool when the block ends normally, and is discarded on an exception."""
        lease = Lease(self, self.acquire())
        try:
            yield lease
        except BaseException:
            if lease._sandbox is not None:
                self.discard(lease._sandbox)
            raise
        if lease._sandbox is not None:
            self.release(lease._sandbox)

    def warm(self, n: int | None = None) -> int:
        """Create sandboxes until `n` (default `size`) exist; returns how many are idle."""
        want = self.size if n is None else min(n, self.size)
        made = []
        with self._cond:
            extra = max(0, want - self._count)
            self._count += extra
        try:
            for _ in range(extra):
                made.append(self._create())
        finally:
            with self._cond:
                self._count -= extra - len(made)
                self.created += len(made)
                self._idle.extend(made)
                self._cond.notify_all()
        return len(self._idle)

    # ---------------------------------------------------------------- state
    @property
    def idle(self) -> int:
        """Sandboxes waiting in the pool."""
        return len(self._idle)

    @property
    def count(self) -> int:
        """Sandboxes that exist (idle or leased)."""
        return self._count

    def close(self) -> None:
        """Close the idle sandboxes; leased ones are closed when given back. Idempotent."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for sb in idle:
            try:
                self._close(sb)
            except Exception:
                pass


class Lease(Generic[T]):
    """One leased sandbox of a `SandboxPool`."""

    def __init__(self, pool: SandboxPool[T], sandbox: T) -> None:
        self.pool = pool
        self._sandbox: T | None = sandbox

    @property
    def sandbox(self) -> T:
        """The leased sandbox (a new one is leased here after a failed reset)."""
        if self._sandbox is None:
            self._sandbox = self.pool.acquire()
        return self._sandbox

    def reset(self) -> None:
        """Back to fresh snapshot state for the next item; a sandbox whose reset fails is
        closed, and the next use of `sandbox` leases a fresh one."""
        sb, self._sandbox = self._sandbox, None
        if sb is not None and self.pool.reset(sb):
            self._sandbox = sb
