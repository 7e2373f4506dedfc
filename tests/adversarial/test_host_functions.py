"""Host functions that misbehave can never desynchronise calls or reach another call's state.

The contract (docs/security.md, "Host functions"): an `Exception` from a host function goes
back to the guest as an error reply (HostPrint: the guest's write fails with EIO) and the call
goes on; a `BaseException` (KeyboardInterrupt, SystemExit...) abandons the call, poisons the
sandbox and propagates unchanged; a host function may not call, restore, snapshot or close its
own sandbox (SandboxBusyError, which the guest sees as an error reply)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from snapcell import (
    CallAbandoned,
    ExecutionCancelled,
    GuestError,
    HostFunctions,
    MultiUseSandbox,
    SandboxBusyError,
    SandboxStatus,
    Snapshot,
)
from snapcell.types import I32

from .conftest import Fingerprint, fingerprint, host_functions


def _sandbox(snap: Snapshot, fn: Callable[[I32], I32] | None = None,
             printer: Callable[[str], I32] | None = None) -> MultiUseSandbox:
    hf = host_functions()
    if fn is not None:
        hf.register("Evil", fn)
    if printer is not None:
        hf.register("HostPrint", printer)
    return MultiUseSandbox.from_snapshot(snap, host_functions=hf)


def _still_in_step(sb: MultiUseSandbox, ref: Fingerprint) -> None:
    """Calls are not shifted: an echo returns its own argument, and after restore the sandbox
    computes the fresh-VM fingerprint."""
    for v in (7, -3, 12345):
        assert sb.call("CallHost", "Echo", v) == v
    sb.restore(sb._snapshot)
    assert fingerprint(sb) == ref


@pytest.mark.parametrize("exc", [ValueError("boom"), RuntimeError("x" * 10000), ZeroDivisionError(),
                                 StopIteration(), MemoryError()])
def test_exception_goes_back_to_the_guest(exc: Exception, attacker_snapshot: Snapshot,
                                          references: dict[int, Fingerprint]) -> None:
    def evil(v: I32) -> I32:
        raise exc

    with _sandbox(attacker_snapshot, evil) as sb:
        with pytest.raises(GuestError) as e:
            sb.call("CallHost", "Evil", 1)
        assert type(exc).__name__ in str(e.value)
        assert sb.status is SandboxStatus.READY
        _still_in_step(sb, references[id(attacker_snapshot)])


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exception_poisons_and_propagates(exc: type[BaseException],
                                               attacker_snapshot: Snapshot,
                                               references: dict[int, Fingerprint]) -> None:
    def evil(v: I32) -> I32:
        raise exc()

    with _sandbox(attacker_snapshot, evil) as sb:
        with pytest.raises(exc):
            sb.call("CallHost", "Evil", 1)
        assert sb.status is SandboxStatus.POISONED
        assert isinstance(sb._core.poison_reason, CallAbandoned)
        sb.restore(attacker_snapshot)
        _still_in_step(sb, references[id(attacker_snapshot)])


@pytest.mark.parametrize("exc", [ValueError("print failed"), KeyboardInterrupt()])
def test_host_print_failure(exc: BaseException, attacker_snapshot: Snapshot,
                            references: dict[int, Fingerprint]) -> None:
    def printer(text: str) -> I32:
        raise exc

    with _sandbox(attacker_snapshot, printer=printer) as sb:
        if isinstance(exc, Exception):
            assert sb.call("Print", "hello\n") == -1          # the guest's write failed (EIO)
            assert sb.status is SandboxStatus.READY
        else:
            with pytest.raises(KeyboardInterrupt):
                sb.call("Print", "hello\n")
            assert sb.status is SandboxStatus.POISONED
            sb.restore(attacker_snapshot)
        _still_in_step(sb, references[id(attacker_snapshot)])


REENTRY: dict[str, Callable[[MultiUseSandbox, Snapshot], Any]] = {
    "call": lambda sb, snap: sb.call("Probe"),
    "restore": lambda sb, snap: sb.restore(snap),
    "snapshot": lambda sb, snap: sb.snapshot(),
    "close": lambda sb, snap: sb.close(),
}


@pytest.mark.parametrize("what", sorted(REENTRY))
def test_reentry_is_refused(what: str, attacker_snapshot: Snapshot,
                            references: dict[int, Fingerprint]) -> None:
    box: list[MultiUseSandbox] = []
    seen: list[BaseException] = []

    def evil(v: I32) -> I32:
        try:
            REENTRY[what](box[0], attacker_snapshot)
        except BaseException as e:
            seen.append(e)
            raise
        return v

    with _sandbox(attacker_snapshot, evil) as sb:
        box.append(sb)
        with pytest.raises(GuestError, match="SandboxBusyError"):
            sb.call("CallHost", "Evil", 5)
        assert len(seen) == 1 and isinstance(seen[0], SandboxBusyError)
        assert sb.status is SandboxStatus.READY
        _still_in_step(sb, references[id(attacker_snapshot)])


def test_second_thread_is_refused(attacker_snapshot: Snapshot,
                                  references: dict[int, Fingerprint]) -> None:
    inside, release = threading.Event(), threading.Event()

    def blocking(v: I32) -> I32:
        inside.set()
        release.wait(10)
        return v

    with _sandbox(attacker_snapshot, blocking) as sb:
        results: list[Any] = []
        t = threading.Thread(target=lambda: results.append(sb.call("CallHost", "Evil", 9)))
        t.start()
        assert inside.wait(10)
        with pytest.raises(SandboxBusyError):
            sb.call("Probe")
        with pytest.raises(SandboxBusyError):
            sb.restore(attacker_snapshot)
        release.set()
        t.join(10)
        assert results == [9]
        _still_in_step(sb, references[id(attacker_snapshot)])


def test_kill_from_inside_a_host_function(attacker_snapshot: Snapshot,
                                          references: dict[int, Fingerprint]) -> None:
    box: list[MultiUseSandbox] = []

    def evil(v: I32) -> I32:
        box[0].interrupt_handle().kill()
        return v

    with _sandbox(attacker_snapshot, evil) as sb:
        box.append(sb)
        with pytest.raises(ExecutionCancelled):
            sb.call("CallHost", "Evil", 1)
        sb.restore(attacker_snapshot)
        _still_in_step(sb, references[id(attacker_snapshot)])


@pytest.mark.parametrize("bad", [None, "str", 2**40, 1.5, [1], b"x"])
def test_bad_return_value(bad: Any, attacker_snapshot: Snapshot,
                          references: dict[int, Fingerprint]) -> None:
    def evil(v: I32) -> I32:
        return bad  # type: ignore[no-any-return]

    with _sandbox(attacker_snapshot, evil) as sb:
        with pytest.raises(GuestError, match="returned a bad value"):
            sb.call("CallHost", "Evil", 1)
        _still_in_step(sb, references[id(attacker_snapshot)])


def test_host_function_that_closes_another_sandbox(attacker_snapshot: Snapshot,
                                                   references: dict[int, Fingerprint]) -> None:
    other = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())

    def evil(v: I32) -> I32:
        other.close()
        return v

    with _sandbox(attacker_snapshot, evil) as sb:
        assert sb.call("CallHost", "Evil", 4) == 4
        _still_in_step(sb, references[id(attacker_snapshot)])
    assert other.status is SandboxStatus.CLOSED


def test_registering_host_functions_from_a_host_function(attacker_snapshot: Snapshot,
                                                         references: dict[int, Fingerprint]) -> None:
    hf = host_functions()

    def evil(v: I32) -> I32:
        hf.register("Late", lambda x: x, signature=hf.get("Echo").signature)  # type: ignore[union-attr]
        return v

    hf.register("Evil", evil)
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=hf) as sb:
        assert sb.call("CallHost", "Evil", 3) == 3
        assert sb.call("CallHost", "Late", 11) == 11
        _still_in_step(sb, references[id(attacker_snapshot)])


def test_requests_read_in_place_follow_the_registry(attacker_snapshot: Snapshot,
                                                    references: dict[int, Fingerprint]) -> None:
    """Host-call requests of one fixed layout are read in place, found by their first 8 bytes
    (HostCallCodec.matcher). Two functions whose requests share those bytes (same length,
    same first two name bytes) are both served right, and a function replaced in the registry
    between or during calls is never served by its old matcher."""
    hf = host_functions()
    hf.register("Twin1", lambda v: v + 1, signature=hf.get("Echo").signature)  # type: ignore[union-attr]
    hf.register("Twin2", lambda v: v + 2, signature=hf.get("Echo").signature)  # type: ignore[union-attr]
    with MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=hf) as sb:
        for i in range(20):
            assert sb.call("CallHost", f"Twin{1 + i % 2}", i) == i + 1 + i % 2
        shared = [m for _, m in sb._core._matchers.values() if len(m) > 1]  # noqa: SLF001
        assert [sorted(name for _, name in m) for m in shared] == [["Twin1", "Twin2"]]
        hf.register("Twin1", lambda v: v * 100, signature=hf.get("Echo").signature)  # type: ignore[union-attr]
        assert sb.call("CallHost", "Twin1", 3) == 300
        assert sb.call("CallHost", "Twin2", 3) == 5

        def swap(v: I32) -> I32:      # replaces Twin2 while the guest is in a call
            hf.register("Twin2", lambda x: -x, signature=hf.get("Echo").signature)  # type: ignore[union-attr]
            return v

        hf.register("Evil", swap)
        assert sb.call("CallHost", "Evil", 1) == 1
        assert sb.call("CallHost", "Twin2", 7) == -7
        _still_in_step(sb, references[id(attacker_snapshot)])


_ = HostFunctions
