"""Cancelling a running guest call: interrupt handles, the vCPU signal, and call timeouts.

A call runs KVM_RUN on the calling thread. `InterruptHandle.kill()` (any thread) marks the call
cancelled, sets kvm_run.immediate_exit (so a KVM_RUN about to start returns at once — a signal
sent just before KVM_RUN would otherwise be lost) and sends the configured real-time signal to
the vCPU thread, which makes a running KVM_RUN return with EINTR. It re-sends every
`interrupt_retry_delay` until the call loop has noticed. Timeouts use one watchdog thread per
process that kills calls whose deadline passed."""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from typing import Any

from ..errors import ConfigurationError

_installed: set[int] = set()
_install_lock = threading.Lock()
_get_ident = threading.get_ident
_monotonic = time.monotonic


def _noop(signum: int, frame: Any) -> None:
    """The vCPU interrupt signal only has to make KVM_RUN return EINTR."""


def install_signal(offset: int) -> int:
    """Install the no-op handler for SIGRTMIN+offset (once; main thread only). An application's
    own handler on that signal is never replaced: choose another `interrupt_signal` instead."""
    signum = signal.SIGRTMIN + offset
    if signum in _installed:              # every sandbox creation asks: no lock once installed
        return signum
    with _install_lock:
        if signum in _installed:
            return signum
        current = signal.getsignal(signum)
        if current not in (signal.SIG_DFL, None, _noop):
            raise ConfigurationError(
                f"signal {signum} (SIGRTMIN+{offset}) already has a handler in this application; "
                "set SandboxConfiguration.interrupt_signal to a free offset")
        if current is not _noop:
            try:
                signal.signal(signum, _noop)
            except ValueError:
                raise ConfigurationError(
                    "the interrupt signal handler must first be installed from the main thread: "
                    "create one sandbox (or call snapcell.sandbox.interrupt.install_signal) there"
                ) from None
        _installed.add(signum)
        return signum


class InterruptHandle:
    """Thread-safe canceller of one sandbox's calls. Get it with `sandbox.interrupt_handle()`.

    The call thread's side (`begin`, `end`, `cancelled`, `acknowledge`) is lock-free: it only
    stores plain attributes, which the GIL makes atomic, and publishes a call in a fixed order
    (`_call` before `_thread`). Killers serialise among themselves with `_lock` and decide from
    one read of (`_thread`, `_call`). A killer that loses a race with the end of its call can
    at worst leave `immediate_exit` set for a later call; that call then sees one stray EINTR,
    finds it is not the cancelled call and carries on (`rearm`). A kill can never cancel a call
    other than the one whose id it read."""

    def __init__(self, signum: int, retry_delay: float, run_struct: Any) -> None:
        self._signum = signum
        self._retry_delay = retry_delay
        self._run = run_struct
        self._lock = threading.Lock()
        self._thread: int | None = None          # ident of the thread inside a call
        self._call = 0                           # id of the current (or last) call
        self._cancel: int | None = None          # id of the call a kill targeted
        self._timed_out = False
        self._observed = 0                       # id of the last call that saw its cancellation
        self._armed: tuple[float, int] | None = None   # the current call's (deadline, id)
        self._watched = False                    # known to the watchdog's thread

    # ---- used by the call loop (the vCPU thread)
    # `begin` and `end` are inlined in Core's call loop: keep the two in step.
    def begin(self) -> int:
        """A call starts on this thread; returns its id. Nothing of an earlier call needs
        clearing: `_cancel` names the call it cancels (and `_timed_out` is written with it),
        and a stale immediate_exit costs the new call one EINTR (`rearm`)."""
        call = self._call + 1
        self._call = call                        # published before _thread (see the class doc)
        self._thread = _get_ident()
        return call

    def end(self) -> None:
        """The call finished (any way). A killer still waiting for it stops at its next poll."""
        self._thread = None

    def retarget(self, run_struct: Any) -> None:
        """Point the handle at a replacement vCPU's kvm_run (between calls)."""
        with self._lock:
            self._run = run_struct

    def cancelled(self) -> bool:
        """Whether the current call was killed (the loop then stops it)."""
        return self._cancel == self._call

    def timed_out(self) -> bool:
        """Whether the cancellation came from a timeout."""
        return self._timed_out

    def acknowledge(self) -> None:
        """The loop saw the cancellation: stop re-sending."""
        self._run.immediate_exit = 0
        self._observed = self._call

    def rearm(self) -> None:
        """A stray EINTR (no kill): clear immediate_exit and keep running."""
        with self._lock:
            if not self.cancelled():
                self._run.immediate_exit = 0

    def poke(self) -> bool:
        """Make a running KVM_RUN return (EINTR) without cancelling the call — for a debugger's
        Ctrl-C. Returns False when no call runs."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return False
            self._run.immediate_exit = 1
        if thread != threading.get_ident():
            try:
                signal.pthread_kill(thread, self._signum)
            except ProcessLookupError:
                pass
        return True

    # ---- used by anyone
    def kill(self) -> bool:
        """Cancel the call in progress. Returns False (and changes nothing) when no call runs."""
        return self._kill(timeout=False, call_id=None)

    def _kill(self, timeout: bool, call_id: int | None) -> bool:
        with self._lock:
            thread = self._thread
            target = self._call     # read after _thread, which begin() publishes after _call
            if thread is None or (call_id is not None and call_id != target):
                return False
            self._cancel = target
            self._timed_out = timeout
            self._run.immediate_exit = 1
        if thread == threading.get_ident():       # killed from inside the call (a host function)
            return True
        # Signal the thread running the call until the loop has seen the cancellation or the
        # call is over (polled: the call path stays free of synchronisation objects).
        while True:
            try:
                signal.pthread_kill(thread, self._signum)
            except ProcessLookupError:
                return True
            time.sleep(self._retry_delay)
            thread = self._thread
            if self._observed == target or thread is None or self._call != target:
                return True


class Watchdog:
    """One thread that kills calls whose deadline passed.

    Arming is lock-free in the usual case, so a call with a timeout costs little more than one
    without. A call stores its (deadline, call id) in its handle (`_armed`) and takes the lock
    only when the thread might not look in time: the handle is new to the watchdog, or the
    deadline is earlier than `_wake_at`, the moment the thread next looks. The thread scans
    its handles at every wake; while it scans, `_wake_at` is +inf, so that a call arming
    meanwhile takes the lock and wakes it again. Whatever the interleaving, a deadline is seen
    by a scan, or its call wakes the thread, or the thread wakes no later than the deadline.

    With nothing armed the thread wakes every `_idle` seconds, the shortest timeout armed
    through the lock since it last went idle: a run of calls with timeouts at least that long
    then never takes the lock. After `IDLE_ROUNDS` such wakes with nothing armed it sleeps
    until the next call wakes it."""

    IDLE_ROUNDS = 20

    def __init__(self) -> None:
        self._handles: weakref.WeakSet[InterruptHandle] = weakref.WeakSet()
        self._fired: weakref.WeakKeyDictionary[InterruptHandle, int] = \
            weakref.WeakKeyDictionary()             # handle → id of the call last killed
        self._cv = threading.Condition()
        self._wake_at = float("inf")           # when the thread next looks at the deadlines
        self._idle = float("inf")
        self._idle_rounds = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, handle: InterruptHandle, call_id: int) -> None:
        """Kill call `call_id` of `handle` after `seconds` unless it ends (`disarm`) first."""
        deadline = _monotonic() + seconds
        handle._armed = (deadline, call_id)     # published before _wake_at is read
        if deadline >= self._wake_at and handle._watched:
            return                              # the thread looks before the deadline
        with self._cv:
            self._idle_rounds = 0
            if handle not in self._handles:
                self._handles.add(handle)
                handle._watched = True
            if seconds < self._idle:
                self._idle = seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="snapcell-watchdog",
                                                daemon=True)
                self._thread.start()
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._cv.notify()

    def after_fork(self) -> None:
        """In a forked child: the thread did not survive the fork (and the lock may have been
        held by some other thread of the parent), so start over — the next timeout starts a
        new thread and registers its handle again. Registered with os.register_at_fork."""
        for handle in list(self._handles):
            handle._watched = False
        self._handles = weakref.WeakSet()
        self._fired = weakref.WeakKeyDictionary()
        self._cv = threading.Condition()
        self._wake_at = self._idle = float("inf")
        self._idle_rounds = 0
        self._thread = None

    def disarm(self, handle: InterruptHandle, call_id: int) -> None:
        """Call `call_id` of `handle` ended: forget its deadline."""
        handle._armed = None

    def _loop(self) -> None:
        while True:
            expired: list[tuple[InterruptHandle, int]] = []
            with self._cv:
                self._wake_at = float("inf")       # arming now takes the lock (see the class)
                now = _monotonic()
                wake = float("inf")
                for handle in list(self._handles):
                    armed = handle._armed
                    if armed is None:
                        continue
                    deadline, call_id = armed
                    if deadline > now:
                        wake = min(wake, deadline)
                    elif self._fired.get(handle) != call_id:
                        self._fired[handle] = call_id
                        expired.append((handle, call_id))
                if not expired:
                    if wake < float("inf"):
                        self._idle_rounds = 0
                    elif self._idle_rounds < self.IDLE_ROUNDS and self._idle < float("inf"):
                        self._idle_rounds += 1
                        wake = now + self._idle
                    else:
                        self._idle = float("inf")
                    self._wake_at = wake
                    self._cv.wait(None if wake == float("inf") else wake - now)
                    continue
            for handle, call_id in expired:
                handle._kill(timeout=True, call_id=call_id)


watchdog = Watchdog()
os.register_at_fork(after_in_child=watchdog.after_fork)   # timeouts work in forked children

try:   # the common case: snapcell is imported on the main thread
    if threading.current_thread() is threading.main_thread():
        install_signal(0)
except ConfigurationError:
    pass
