"""Snapshots on real KVM: snapshot/restore, sandboxes created directly from snapshots, lineage,
rejections that change nothing, pre-init snapshots, copy-on-write isolation."""

from __future__ import annotations

import pytest

from snapcell import (
    GuestAbort,
    HostFunctions,
    MultiUseSandbox,
    SandboxBuilder,
    SandboxConfiguration,
    SandboxPoisonedError,
    SandboxStatus,
    Snapshot,
    UninitializedSandbox,
)
from snapcell.errors import (
    ConfigurationError,
    PoisoningError,
    SandboxClosedError,
    SnapshotHostFunctionMismatch,
    SnapshotLayoutMismatch,
    SnapshotLayoutWarning,
    SnapshotStateError,
)
from snapcell.types import I32, I64

from .conftest import BIG, make_host_functions


def test_restore_resets_state(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    assert sandbox.call("AddToStatic", 5) == 5
    sandbox.restore(snap)
    assert sandbox.call("GetStatic") == 0
    assert sandbox.call("AddToStatic", 2) == 2


def test_state_carried_into_from_snapshot(sandbox: MultiUseSandbox) -> None:
    sandbox.call("AddToStatic", 5)
    sandbox.call("AddToStatic", 6)
    snap = sandbox.snapshot()
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb2:
        assert sb2.call("GetStatic") == 11
        assert sb2.call("Add", 20, 22) == 42          # host functions supplied here are called
        assert sb2.call("Echo", "from a snapshot") == "from a snapshot"


def test_siblings_isolated_copy_on_write(sandbox: MultiUseSandbox) -> None:
    sandbox.call("AddToStatic", 1)
    snap = sandbox.snapshot()
    a = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions())
    b = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions())
    try:
        assert a.call("AddToStatic", 10) == 11
        assert b.call("AddToStatic", 100) == 101
        a.call("AllocAndWritePattern", 300_000)
        assert a.call("GetStatic") == 11 and b.call("GetStatic") == 101
        assert sandbox.call("GetStatic") == 1
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as c:
            assert c.call("GetStatic") == 1           # the snapshot itself never changed
        a.restore(snap)
        b.restore(snap)
        assert a.call("GetStatic") == 1 and b.call("GetStatic") == 1
    finally:
        a.close()
        b.close()


def test_restore_across_sandboxes_with_superset(sandbox: MultiUseSandbox, simpleguest: str) -> None:
    sandbox.call("AddToStatic", 7)
    snap = sandbox.snapshot()
    hf = make_host_functions()

    def extra(x: I64) -> I64:
        return x

    hf.register("ExtraHostFunction", extra)
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf).evolve() as other:
        other.call("AddToStatic", 1000)
        other.restore(snap)
        assert other.call("GetStatic") == 7
        assert other.call("Add", 1, 1) == 2


def test_cached_snapshot(sandbox: MultiUseSandbox) -> None:
    s1 = sandbox.snapshot()
    assert sandbox.snapshot() is s1
    sandbox.call("NoOp")
    s2 = sandbox.snapshot()
    assert s2 is not s1
    assert s2.generation == s1.generation + 1 == 2


def test_late_registration_invalidates_cache(sandbox: MultiUseSandbox) -> None:
    s1 = sandbox.snapshot()

    def late(x: I32) -> I32:
        return x

    sandbox.host_functions.register("LateFunction", late)
    s2 = sandbox.snapshot()
    assert s2 is not s1
    assert s2.host_functions is not None and "LateFunction" in s2.host_functions
    assert s1.host_functions is not None and "LateFunction" not in s1.host_functions


def test_generation_lineage(sandbox: MultiUseSandbox) -> None:
    s1 = sandbox.snapshot()
    assert s1.generation == 1
    with MultiUseSandbox.from_snapshot(s1, host_functions=make_host_functions()) as sb2:
        sb2.call("AddToStatic", 1)
        s2 = sb2.snapshot()
        assert s2.generation == 2
        with MultiUseSandbox.from_snapshot(s2, host_functions=make_host_functions()) as sb3:
            sb3.call("NoOp")
            assert sb3.snapshot().generation == 3


def test_missing_host_function_rejected(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    with pytest.raises(SnapshotHostFunctionMismatch) as e:
        MultiUseSandbox.from_snapshot(snap, host_functions=HostFunctions())
    assert "HostAdd" in e.value.missing and "HostEchoI32" in e.value.missing
    assert e.value.signature_mismatches == {}


def test_signature_mismatch_rejected(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    hf = make_host_functions()

    def add(a: I64, b: I64) -> I64:
        return a + b

    hf.register("HostAdd", add)
    with pytest.raises(SnapshotHostFunctionMismatch) as e:
        MultiUseSandbox.from_snapshot(snap, host_functions=hf)
    assert e.value.missing == []
    assert set(e.value.signature_mismatches) == {"HostAdd"}
    expected, offered = e.value.signature_mismatches["HostAdd"]
    assert "i32" in expected and "i64" in offered


def test_refused_restore_changes_nothing(sandbox: MultiUseSandbox, simpleguest: str) -> None:
    sandbox.call("AddToStatic", 3)
    snap = sandbox.snapshot()
    # a target whose registry lacks HostAdd
    hf = make_host_functions()
    hf2 = HostFunctions()
    for name in hf:
        if name != "HostAdd":
            hf2.register(name, hf.get(name).fn)  # type: ignore[union-attr]
    with UninitializedSandbox(simpleguest, config=BIG, host_functions=hf2).evolve() as target:
        target.call("AddToStatic", 40)
        with pytest.raises(SnapshotHostFunctionMismatch) as e:
            target.restore(snap)
        assert e.value.missing == ["HostAdd"]
        assert target.status is SandboxStatus.READY and target.call("GetStatic") == 40
    # a poisoned target stays poisoned after a refused restore
    with UninitializedSandbox(simpleguest, host_functions=make_host_functions()).evolve() as small:
        with pytest.raises(GuestAbort):
            small.call("GuestAbortWithCode", 1)
        with pytest.raises(SnapshotLayoutMismatch):
            small.restore(snap)
        assert small.status is SandboxStatus.POISONED


def test_incompatible_layout_rejected(sandbox: MultiUseSandbox, simpleguest: str) -> None:
    snap = sandbox.snapshot()
    with UninitializedSandbox(simpleguest, config=SandboxConfiguration(heap_size=4 << 20),
                              host_functions=make_host_functions()).evolve() as other:
        other.call("AddToStatic", 9)
        with pytest.raises(SnapshotLayoutMismatch):
            other.restore(snap)
        assert other.call("GetStatic") == 9


def test_from_snapshot_layout_fields_warn(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    cfg = SandboxConfiguration(heap_size=2 << 20, max_execution_time=5.0)
    with pytest.warns(SnapshotLayoutWarning, match="heap_size"):
        sb = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions(), config=cfg)
    with sb:
        assert sb.config.heap_size == snap.layout.heap_size
        assert sb.config.max_execution_time == 5.0
        assert sb.call("EchoI32", 1) == 1


def test_pre_init_snapshot(kvm_ok: None, simpleguest: str) -> None:
    u = UninitializedSandbox(simpleguest, config=BIG)
    pre = u.snapshot()
    assert not pre.initialised and pre.generation == 0 and pre.functions is None
    with MultiUseSandbox.from_snapshot(pre, host_functions=HostFunctions.empty(), config=BIG) as sb:
        assert sb.call("GetStatic") == 0
        assert sb.call("EchoI32", 4) == 4
    with MultiUseSandbox.from_snapshot(pre, host_functions=make_host_functions(), config=BIG) as sb:
        assert sb.call("Add", 2, 3) == 5
        with pytest.raises(SnapshotStateError):
            sb.restore(pre)
    pre2 = Snapshot.from_guest(simpleguest, BIG)
    with MultiUseSandbox.from_snapshot(pre2, host_functions=make_host_functions(), config=BIG) as sb:
        assert sb.snapshot().generation == 1


def test_poison_then_restore(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    for bad in (("ReadAddress", 8), ("GuestAbortWithMessage", 25, "Oh no"), ("TriggerException",),
                ("StackOverflow", 100_000), ("DivideByZero",)):
        with pytest.raises(PoisoningError):
            sandbox.call(*bad)
        assert sandbox.status is SandboxStatus.POISONED
        with pytest.raises(SandboxPoisonedError):
            sandbox.snapshot()
        sandbox.restore(snap)
        assert sandbox.status is SandboxStatus.READY
        assert sandbox.call("Echo", "alive") == "alive"
        assert sandbox.call("AddToStatic", 1) == 1
        sandbox.restore(snap)


def test_random_differs_between_siblings_and_restores(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    seen = set()
    for _ in range(4):
        with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
            seen.add(sb.call("NextRandom"))
    for _ in range(4):
        sandbox.restore(snap)
        seen.add(sandbox.call("NextRandom"))
    assert len(seen) == 8


def test_fpu_state_restored(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    assert sandbox.call("EchoF64", 1.25) == 1.25
    sandbox.restore(snap)
    assert sandbox.call("EchoF32", 0.5) == 0.5
    assert sandbox.call("FormatValues", 1, 0.125, "f") == "1|0.125|f|1|1.250000e-01"


def test_builder(kvm_ok: None, simpleguest: str) -> None:
    hf = make_host_functions()
    with SandboxBuilder().with_host_functions(hf).with_layout(heap_size=4 << 20) \
            .build_from_file(simpleguest) as sb:
        sb.call("AddToStatic", 2)
        snap = sb.snapshot()
    with open(simpleguest, "rb") as f:
        with SandboxBuilder().with_host_functions(hf).build_from_bytes(f.read()) as sb:
            assert sb.call("Add", 1, 2) == 3
    with SandboxBuilder().with_host_functions(hf).with_runtime(max_execution_time=2.0) \
            .build_from_snapshot(snap) as sb:
        assert sb.call("GetStatic") == 2
    with pytest.raises(ConfigurationError, match="heap_size"):
        SandboxBuilder().with_layout(heap_size=8 << 20).build_from_snapshot(snap)
    with pytest.raises(ConfigurationError):
        SandboxBuilder().with_layout(bogus=1)


def test_writes_after_snapshot_do_not_leak(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    sandbox.call("SetStatic")
    sandbox.call("AllocAndWritePattern", 1 << 20)
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("ReadPattern") == b""     # no pattern was allocated in the snapshot's state
        assert sb.call("GetStatic") == 0
    sandbox.restore(snap)
    assert sandbox.call("ReadPattern") == b""


def test_closed_sandbox_restore_refused(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    sandbox.close()
    with pytest.raises(SandboxClosedError):
        sandbox.restore(snap)
