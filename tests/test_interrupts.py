"""Cancelling calls: interrupt handles from other threads, timeouts, stress."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from snapcell import (
    ExecutionCancelled,
    ExecutionTimeout,
    HostFunctions,
    MultiUseSandbox,
    SandboxConfiguration,
    SandboxStatus,
    UninitializedSandbox,
)
from snapcell.errors import ConfigurationError

from .conftest import BIG, make_host_functions, open_fds


def _kill_later(sb: MultiUseSandbox, delay: float, out: list[bool]) -> threading.Thread:
    h = sb.interrupt_handle()

    def run() -> None:
        time.sleep(delay)
        out.append(h.kill())

    t = threading.Thread(target=run)
    t.start()
    return t


def test_kill_spin_then_restore(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    out: list[bool] = []
    t = _kill_later(sandbox, 0.1, out)
    with pytest.raises(ExecutionCancelled) as e:
        sandbox.call("Spin")
    t.join()
    assert out == [True] and not isinstance(e.value, ExecutionTimeout)
    assert sandbox.status is SandboxStatus.POISONED
    sandbox.restore(snap)
    assert sandbox.status is SandboxStatus.READY
    assert sandbox.call("Echo", "back") == "back"


def test_kill_when_idle_does_not_affect_next_call(sandbox: MultiUseSandbox) -> None:
    h = sandbox.interrupt_handle()
    assert h.kill() is False
    assert sandbox.call("EchoI32", 5) == 5
    assert sandbox.status is SandboxStatus.READY


def test_kill_during_host_function(kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()
    entered = threading.Event()
    release = threading.Event()

    def spin() -> None:
        entered.set()
        release.wait(5)

    hf.register("Spin", spin)
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf).evolve() as sb:
        h = sb.interrupt_handle()
        result: list[bool] = []

        def killer() -> None:
            entered.wait(5)
            result.append(h.kill())

        k = threading.Thread(target=killer)
        k.start()
        time.sleep(0.05)
        threading.Timer(0.2, release.set).start()
        with pytest.raises(ExecutionCancelled):
            sb.call("CallHostSpin")
        k.join()
        assert result == [True]
        assert sb.status is SandboxStatus.POISONED


def test_sandbox_used_from_another_thread_is_killable(sandbox: MultiUseSandbox) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            sandbox.call("Spin")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.1)
    assert sandbox.interrupt_handle().kill() is True
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ExecutionCancelled)


def test_only_the_targeted_sandbox_is_cancelled(kvm_ok: None, simpleguest: str) -> None:
    sbs = [UninitializedSandbox(simpleguest).evolve() for _ in range(3)]
    try:
        snap = sbs[1].snapshot()
        target = sbs[1]
        h = target.interrupt_handle()

        def kill_until_done() -> None:
            while not h.kill():          # False until the Spin call has started
                time.sleep(0.0002)

        for i in range(500):
            assert sbs[0].call("EchoI32", i) == i
            t = threading.Thread(target=kill_until_done)
            t.start()
            with pytest.raises(ExecutionCancelled):
                target.call("Spin", timeout=10)
            t.join()
            assert sbs[2].call("EchoI32", i) == i
            assert sbs[0].status is SandboxStatus.READY and sbs[2].status is SandboxStatus.READY
            target.restore(snap)
    finally:
        for sb in sbs:
            sb.close()


def test_timeout(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    t0 = time.monotonic()
    with pytest.raises(ExecutionTimeout):
        sandbox.call("Spin", timeout=0.05)
    assert time.monotonic() - t0 < 0.9
    sandbox.restore(snap)
    assert sandbox.call("Echo", "fine", timeout=30) == "fine"


def test_timeouts_fire_on_each_watchdog_path(sandbox: MultiUseSandbox,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Arming takes the lock only when the watchdog might look too late (interrupt.Watchdog):
    a deadline later than the thread's next wake is armed lock-free. Drive each path: the
    lock-free one (the thread idling at the shortest timeout seen), an earlier deadline than
    the thread's wake, and arming after the thread went to sleep for good."""
    from snapcell.sandbox.interrupt import Watchdog, watchdog
    monkeypatch.setattr(Watchdog, "IDLE_ROUNDS", 3)
    snap = sandbox.snapshot()

    def spins(timeout: float) -> None:
        with pytest.raises(ExecutionTimeout):
            sandbox.call("Spin", timeout=timeout)
        sandbox.restore(snap)

    for _ in range(50):                     # the first arms through the lock, the rest not
        assert sandbox.call("EchoI32", 3, timeout=0.2) == 3
    deadline = time.monotonic() + 5
    while watchdog._wake_at == float("inf") and time.monotonic() < deadline:
        time.sleep(0.01)                    # the thread has scanned and idles every 0.2 s
    assert watchdog._wake_at < float("inf") and sandbox.interrupt_handle()._watched
    spins(0.2)                              # lock-free: a deadline after the next wake
    spins(0.01)                             # earlier than the thread's wake: through the lock
    deadline = time.monotonic() + 10
    while watchdog._wake_at < float("inf") and time.monotonic() < deadline:
        time.sleep(0.05)                    # three idle wakes, then asleep until woken
    assert watchdog._wake_at == float("inf")
    spins(0.05)
    assert sandbox.call("EchoI32", 4, timeout=30) == 4


def test_config_max_execution_time(kvm_ok: None, simpleguest: str) -> None:
    cfg = SandboxConfiguration(max_execution_time=0.05)
    with UninitializedSandbox(simpleguest, config=cfg).evolve() as sb:
        assert sb.call("EchoI32", 1) == 1
        with pytest.raises(ExecutionTimeout):
            sb.call("Spin")


def test_bad_timeout_is_an_argument_error(sandbox: MultiUseSandbox) -> None:
    from snapcell import ArgumentError
    with pytest.raises(ArgumentError):
        sandbox.call("NoOp", timeout=-1)
    assert sandbox.call("NoOp", timeout=1) is None


def test_application_signal_handler_is_respected(kvm_ok: None, simpleguest: str) -> None:
    offset = 5
    signum = signal.SIGRTMIN + offset
    calls: list[int] = []
    old = signal.signal(signum, lambda s, f: calls.append(s))
    try:
        with pytest.raises(ConfigurationError, match="interrupt_signal"):
            UninitializedSandbox(simpleguest, config=SandboxConfiguration(interrupt_signal=offset)).evolve()
        assert signal.getsignal(signum) is not signal.SIG_DFL      # still the application's
        config = SandboxConfiguration(interrupt_signal=3)
        with UninitializedSandbox(simpleguest, config=config).evolve() as sb:
            assert sb.call("EchoI32", 2) == 2
    finally:
        signal.signal(signum, old)


def test_stress_random_kills(kvm_ok: None, simpleguest: str) -> None:
    """Threads call Spin (killed) and Echo (never killed) on their own sandboxes while a killer
    fires at random: a call that was not killed never reports cancellation; nothing hangs."""
    fds = open_fds()
    deadline = time.monotonic() + float(os.environ.get("SNAPCELL_STRESS_SECONDS", "20"))
    n_threads = 4
    failures: list[str] = []
    handles: list[tuple[MultiUseSandbox, threading.Event]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with UninitializedSandbox(simpleguest, config=SandboxConfiguration(),
                                  host_functions=HostFunctions()).evolve() as sb:
            snap = sb.snapshot()
            spinning = threading.Event()
            with lock:
                handles.append((sb, spinning))
            while time.monotonic() < deadline:
                if rng.random() < 0.5:
                    spinning.set()
                    try:
                        sb.call("Spin", timeout=2)
                        failures.append("Spin returned")
                    except ExecutionTimeout:
                        failures.append("a Spin was never killed")
                    except ExecutionCancelled:
                        pass
                    spinning.clear()
                    sb.restore(snap)
                else:
                    try:
                        for i in range(20):
                            if sb.call("EchoI32", i) != i:
                                failures.append("wrong echo")
                    except ExecutionCancelled:
                        failures.append("a call that was not killed reported cancellation")
                        sb.restore(snap)

    def killer() -> None:
        rng = random.Random(99)
        while time.monotonic() < deadline + 0.5:
            time.sleep(rng.uniform(0.0005, 0.005))
            with lock:
                targets = [(sb, ev) for sb, ev in handles if ev.is_set()]
            for sb, _ev in targets:
                sb.interrupt_handle().kill()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(60.0, deadline - time.monotonic() + 60))
        assert not t.is_alive(), "a thread hung"
    assert failures == []
    assert open_fds() <= fds + 2 * n_threads + 2
