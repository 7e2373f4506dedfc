"""Nothing a guest leaves behind reaches a restored sandbox or the next tenant of its VM.

Every attack is checked three ways (issue: isolation holes):
1. the attacker gets a clear snapcell error (or, for attacks that are legal guest behaviour,
   none), never a raw exception;
2. the attacker's sandbox recovers with `restore()` and then computes exactly the fresh-VM
   fingerprint (Probe result and the hash of registers + all guest memory);
3. a victim that gets the attacker's pooled machine — from the same snapshot (the warm,
   copy-back path) and from another snapshot (the re-map path) — computes exactly what it
   computes on a fresh VM. A machine whose vCPU was tainted must not be handed out at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from snapcell import (
    GuestFault,
    GuestOutputError,
    MachineError,
    MultiUseSandbox,
    PoisoningError,
    SandboxStatus,
    SnapcellError,
    Snapshot,
)

from .conftest import Fingerprint, fingerprint, host_functions, system_part_pristine

KSTACK = 0x13FF8                  # inside the kernel stack (supervisor pages)
NONCANONICAL = 0x0000_8000_0000_0000
KERNEL_HALF = 0xFFFF_8000_0000_0000
TF, DF, NT, AC, RF = 1 << 8, 1 << 10, 1 << 14, 1 << 18, 1 << 16

# (function, args, outcome): "ok" the call must succeed; a tuple of error classes: the call
# must raise one of them; "any": success or any snapcell error (legal but odd guest behaviour)
Outcome = Any
FAULT: Outcome = (PoisoningError,)
ATTACKS: list[tuple[str, tuple[Any, ...], Outcome]] = []
for port in (0x10, 0x11, 0x12, 0x13):
    for width in (1, 2, 4):
        ATTACKS.append(("PortIn", (port, width), (MachineError, GuestFault)))
for width in (1, 2, 4):
    for count in (1, 3, 100, 5000):
        ATTACKS.append(("PortInString", (0x10, width, count), (MachineError, GuestFault)))
    for port, count in ((0x10, 100), (0x11, 3), (0x12, 7), (0x13, 2)):
        ATTACKS.append(("PortOutString", (port, width, count), "any"))
ATTACKS += [
    ("PortOutWide", (0x10, 2), "any"),
    ("PortOutWide", (0x12, 4), "any"),
    ("ScribbleAbi", (0x00,), "ok"),
    ("ScribbleAbi", (0xFF,), "ok"),
    ("ScribbleAbi", (0xA5,), "ok"),
    ("ScribbleSyscallBlock", (0x4141414141414141,), "ok"),
    ("DirtyStackAndHeap", (0x5A,), "ok"),
    ("DirtyFpu", (0xDEADBEEFCAFEF00D,), "ok"),
    ("SetFsBase", (0x1000,), "ok"),
    ("SetGsBase", (KERNEL_HALF,), "ok"),
    ("SetGsBase", (NONCANONICAL,), FAULT),
    ("ReturnWithRsp", (KSTACK,), "ok"),
    ("ReturnWithRsp", (0x10,), "ok"),
    ("ReturnWithRsp", (NONCANONICAL,), "ok"),
    ("SyscallWithRsp", (0x10,), FAULT),
    ("SyscallWithRsp", (KSTACK,), FAULT),
    ("SyscallWithRsp", (NONCANONICAL,), FAULT),
    ("FaultWithRsp", (0x10,), FAULT),
    ("FaultWithRsp", (KSTACK,), FAULT),
    ("FaultWithRsp", (NONCANONICAL,), FAULT),
]
for flags in (TF, DF, NT, AC, RF, TF | AC | DF):
    ATTACKS.append(("ReturnWithFlags", (flags,), "ok"))
    ATTACKS.append(("SyscallWithFlags", (flags,), "any"))
# Privileged or system instructions must fault; the rest are legal at CPL3 (sgdt/sidt/smsw/
# sldt/str read host-built, documented values; cpuid/rdtscp run natively; selector loads run
# natively against the host kernel's GDT under PVM; KVM refuses vmmcall from CPL3: security.md).
LEGAL = {24, 25, 26, 27, 28, 29, 33, 35, 36, 40, 41, 42, 43, 44, 45, 46}
for n in range(50):
    ATTACKS.append(("Instruction", (n,), "any" if n in LEGAL else FAULT))
for n in range(256):
    ATTACKS.append(("IntN", (n,), FAULT))


def _ids(a: tuple[str, tuple[Any, ...], Any]) -> str:
    return f"{a[0]}{a[1]}"


def attack(sb: MultiUseSandbox, name: str, args: tuple[Any, ...], outcome: Outcome) -> None:
    """Run one attack (and one more call, which may fall over what the attack left), and
    check the attacker only ever sees snapcell errors of the allowed kinds."""
    try:
        sb.call(name, *args)
        assert outcome in ("ok", "any"), f"{name}{args} succeeded; expected {outcome}"
    except SnapcellError as e:
        assert outcome != "ok", f"{name}{args}: unexpected {type(e).__name__}: {e}"
        if outcome != "any":
            assert isinstance(e, outcome), f"{name}{args}: unexpected {type(e).__name__}: {e}"
        assert str(e)
        if isinstance(e, PoisoningError):
            assert sb.status is SandboxStatus.POISONED
    # a second call sees whatever the first left in the attacker's own vCPU: any outcome is
    # allowed for the attacker, as long as it is a snapcell error
    if sb.status is SandboxStatus.READY:
        try:
            sb.call("Probe")
        except SnapcellError:
            pass


@pytest.mark.parametrize("case", ATTACKS, ids=_ids)
def test_attack_leaves_nothing(case: tuple[str, tuple[Any, ...], Outcome],
                               attacker_snapshot: Snapshot, other_snapshot: Snapshot,
                               references: dict[int, Fingerprint], empty_pool: None) -> None:
    name, args, allowed = case
    ref_same, ref_other = references[id(attacker_snapshot)], references[id(other_snapshot)]

    # 1 + 2: the attacker recovers with restore() and then computes the fresh-VM fingerprint
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    attack(sb, name, args, allowed)
    sb.restore(attacker_snapshot)
    assert sb.status is SandboxStatus.READY
    assert system_part_pristine(sb)
    assert fingerprint(sb) == ref_same

    # 3a: a victim of the same snapshot on the attacker's pooled machine (warm path)
    sb.restore(attacker_snapshot)
    attack(sb, name, args, allowed)
    machine, tainted = sb._core.machine, sb._core.machine.tainted
    sb.close()
    victim = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    try:
        reused = victim._core.machine is machine
        assert reused != tainted, "a tainted machine was reused (or a clean one was not)"
        assert system_part_pristine(victim)
        assert fingerprint(victim) == ref_same
    finally:
        victim.close()

    # 3b: a victim of another snapshot on the attacker's pooled machine (re-map path)
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    attack(sb, name, args, allowed)
    machine, tainted = sb._core.machine, sb._core.machine.tainted
    sb.close()
    victim = MultiUseSandbox.from_snapshot(other_snapshot, host_functions=host_functions())
    try:
        assert (victim._core.machine is machine) != tainted
        assert fingerprint(victim) == ref_other
    finally:
        victim.close()


def test_a_tainted_vcpu_is_replaced_on_restore(attacker_snapshot: Snapshot,
                                               references: dict[int, Fingerprint]) -> None:
    """`in` leaves an I/O completion pending inside KVM: the vCPU is discarded, the sandbox
    keeps working on a new one, and its interrupt handle follows."""
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    try:
        first = sb._core.machine
        with pytest.raises(MachineError, match="read from I/O port 0x10"):
            sb.call("PortInString", 0x10, 1, 4096)
        assert first.tainted
        sb.restore(attacker_snapshot)
        assert sb._core.machine is not first and first.vcpu is None    # closed
        assert fingerprint(sb) == references[id(attacker_snapshot)]
        handle = sb.interrupt_handle()
        import threading
        threading.Timer(0.05, handle.kill).start()
        from snapcell import ExecutionCancelled
        with pytest.raises(ExecutionCancelled):
            sb.call("Spin")
    finally:
        sb.close()


def test_granted_ports_reject_input(attacker_snapshot: Snapshot) -> None:
    """The TSS bitmap cannot grant `out` without `in`; an `in` is a clear, poisoning error."""
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    try:
        with pytest.raises(MachineError) as e:
            sb.call("PortIn", 0x13, 1)
        assert "write-only" in str(e.value) and "0x13" in str(e.value)
        assert sb.status is SandboxStatus.POISONED
    finally:
        sb.close()


def test_corrupt_output_poisons(attacker_snapshot: Snapshot) -> None:
    sb = MultiUseSandbox.from_snapshot(attacker_snapshot, host_functions=host_functions())
    try:
        with pytest.raises(GuestOutputError):
            sb.call("RawOut", b"\xff\xff\xff\x7f\x92", 0x10)
    finally:
        sb.close()
