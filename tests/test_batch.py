"""Batched calls on real guests: `call_many` runs many calls of one function per VM entry
(docs/guest-abi.md, "Batched calls")."""

from __future__ import annotations

import time

import pytest

from snapcell import (
    ArgumentError,
    ExecutionTimeout,
    GuestError,
    InvalidOpcode,
    MultiUseSandbox,
    SandboxConfiguration,
    SandboxPoisonedError,
    SandboxStatus,
    Snapshot,
    UninitializedSandbox,
    UnknownFunctionError,
)
from snapcell.sandbox import batch

from .conftest import make_host_functions
from .test_snapshot_files import golden_dirs


def test_results_in_order_and_typed(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call_many("Echo", [["a"], ["bb"], ["ü"]]) == ["a", "bb", "ü"]
    assert sandbox.call_many("EchoI64", [[-(1 << 63)], [(1 << 63) - 1]]) == [-(1 << 63), (1 << 63) - 1]
    assert sandbox.call_many("EchoF32", [[1.5], [0.1]]) == [1.5, pytest.approx(0.1, rel=1e-6)]
    assert sandbox.call_many("EchoBytes", [[b"\x00\xff"], [b""]]) == [b"\x00\xff", b""]
    assert sandbox.call_many("EchoBool", [[True], [False]]) == [True, False]
    assert sandbox.call_many("NoOp", [[]] * 5) == [None] * 5
    assert sandbox.call_many("Echo", []) == []


def test_state_carries_over_like_separate_calls(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call_many("AddToStatic", [[1], [2], [3]]) == [1, 3, 6]
    assert sandbox.call("GetStatic") == 6


def test_guest_errors_are_values_and_the_batch_goes_on(sandbox: MultiUseSandbox) -> None:
    out = sandbox.call_many("AddToStaticAndFail", [[], [], []])
    assert all(isinstance(e, GuestError) and e.code == 1 and e.message == "Crash on purpose"
               for e in out)
    assert sandbox.call("GetStatic") == 30          # every item ran
    assert sandbox.status is SandboxStatus.READY


def test_host_calls_inside_a_batch(sandbox: MultiUseSandbox) -> None:
    items = [[i, 1000 * i] for i in range(500)]
    assert sandbox.call_many("Add", items) == [1001 * i for i in range(500)]
    strs = [[f"s{i}" * (i % 7)] for i in range(300)]
    assert sandbox.call_many("RoundTripHostStr", strs) == [a[0] for a in strs]


def test_output_buffer_fills_and_the_guest_resumes(kvm_ok: None, simpleguest: str) -> None:
    # 4 KiB output buffer: 300 results of 1 KiB need many partial result messages
    cfg = SandboxConfiguration(input_size=64 * 1024, output_size=4096)
    with UninitializedSandbox(simpleguest, config=cfg, host_functions=make_host_functions()).evolve() as sb:
        items = [[chr(65 + i % 26) * 1000] for i in range(300)]
        assert sb.call_many("Echo", items) == [a[0] for a in items]
        # input splits too: 64 KiB of input holds ~60 such items
        assert sb.call("Echo", "after") == "after"


def test_oversized_item_result_is_an_item_error(kvm_ok: None, simpleguest: str) -> None:
    cfg = SandboxConfiguration(input_size=16 * 1024, output_size=4096)
    with UninitializedSandbox(simpleguest, config=cfg, host_functions=make_host_functions()).evolve() as sb:
        out = sb.call_many("Echo", [["x"], ["y" * 5000], ["z"]])
        assert out[0] == "x" and out[2] == "z"
        assert isinstance(out[1], GuestError) and "too large" in out[1].message


def test_every_item_is_checked_before_anything_runs(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(ArgumentError, match="item 2"):
        sandbox.call_many("AddToStatic", [[1], [2], ["three"]])
    with pytest.raises(ArgumentError, match="item 1 has 2 argument"):
        sandbox.call_many("AddToStatic", [[1], [2, 3]])
    with pytest.raises(ArgumentError, match="item 0 must be a list"):
        sandbox.call_many("AddToStatic", [5])           # type: ignore[list-item]
    with pytest.raises(ArgumentError, match="out of range"):
        sandbox.call_many("EchoI32", [[1 << 31]])
    with pytest.raises(UnknownFunctionError):
        sandbox.call_many("NoSuchFunction", [[]])
    with pytest.raises(ArgumentError, match="sequence"):
        sandbox.call_many("Echo", "abc")               # type: ignore[arg-type]
    assert sandbox.call("GetStatic") == 0              # nothing ran


def test_a_fault_ends_the_batch_and_poisons(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    with pytest.raises(InvalidOpcode):
        sandbox.call_many("TriggerException", [[], []])
    assert sandbox.status is SandboxStatus.POISONED
    with pytest.raises(SandboxPoisonedError):
        sandbox.call_many("Echo", [["a"]])
    sandbox.restore(snap)
    assert sandbox.call_many("Echo", [["a"]]) == ["a"]


def test_timeout_covers_the_whole_batch(sandbox: MultiUseSandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(ExecutionTimeout):
        sandbox.call_many("Spin", [[]], timeout=0.05)
    assert time.monotonic() - t0 < 5
    assert sandbox.status is SandboxStatus.POISONED


def test_kill_cancels_a_batch(sandbox: MultiUseSandbox) -> None:
    import threading
    handle = sandbox.interrupt_handle()
    timer = threading.Timer(0.05, handle.kill)
    timer.start()
    from snapcell import ExecutionCancelled
    with pytest.raises(ExecutionCancelled):
        sandbox.call_many("Spin", [[]])
    timer.join()


def test_snapshot_after_a_batch_sees_its_state(sandbox: MultiUseSandbox) -> None:
    before = sandbox.snapshot()
    sandbox.call_many("AddToStatic", [[5], [5]])
    after = sandbox.snapshot()
    assert after is not before
    with MultiUseSandbox.from_snapshot(after, host_functions=make_host_functions()) as other:
        assert other.call("GetStatic") == 10


def test_golden_snapshots_give_the_same_results_as_separate_calls(kvm_ok: None) -> None:
    """Goldens may predate batches (their SDK answers a batch as a malformed call): call_many
    then falls back to separate calls, with the same results."""
    from snapcell.kvm import shared_kvm
    from snapcell.machine.features import host_features
    from snapcell.snapshot import oci
    for d in golden_dirs():
        if oci.inspect(str(d), "static11")["cpu_vendor"] not in ("any", host_features(shared_kvm()).vendor):
            continue
        snap = Snapshot.checked_load(str(d), "static11")
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            assert sb.call_many("AddToStatic", [[1], [2]]) == [12, 14]
            assert sb.call_many("Echo", [["g"]]) == ["g"]
            out = sb.call_many("AddToStaticAndFail", [[]])
            assert isinstance(out[0], GuestError)


def test_frames_split_to_fit_the_input_buffer() -> None:
    packed = [bytes(100)] * 50
    msgs = batch.frames("F", packed, 1024, "F()")
    assert sum(n for _, n in msgs) == 50
    assert all(len(m) <= 1024 for m, _ in msgs)
    with pytest.raises(ArgumentError, match="item 0"):
        batch.frames("F", [bytes(2000)], 1024, "F()")
