"""Guest faults are precise and poison the sandbox; guest-returned errors do not."""

from __future__ import annotations

import pytest

from snapcell import (
    DivideError,
    GeneralProtection,
    GuestAbort,
    GuestError,
    InvalidOpcode,
    MultiUseSandbox,
    PageFault,
    PoisoningError,
    PortViolation,
    SandboxPoisonedError,
    SandboxStatus,
    StackOverflow,
)
from snapcell.guest import GuestBinary


def assert_poisoned(sb: MultiUseSandbox) -> None:
    assert sb.status is SandboxStatus.POISONED
    with pytest.raises(SandboxPoisonedError):
        sb.call("NoOp")


def test_invalid_opcode_at_the_right_rip(sandbox: MultiUseSandbox, simpleguest: str) -> None:
    binary = GuestBinary.from_file(simpleguest)
    with pytest.raises(InvalidOpcode) as e:
        sandbox.call("TriggerException")
    start = binary.symbols.get("TriggerException")
    rip = e.value.rip
    # the faulting instruction is a ud2 (0F 0B) inside the guest's code
    assert e.value.vector == 6 and "#UD" in e.value.exception
    seg = next(s for s in binary.segments if s.vaddr <= rip < s.vaddr + len(s.data))
    assert seg.data[rip - seg.vaddr:rip - seg.vaddr + 2] == b"\x0f\x0b"
    if start is not None:
        assert start <= rip < start + 64
    assert_poisoned(sandbox)


def test_divide_by_zero(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(DivideError) as e:
        sandbox.call("DivideByZero")
    assert e.value.vector == 0
    assert_poisoned(sandbox)


def test_read_unmapped(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(PageFault) as e:
        sandbox.call("ReadAddress", 0x10)
    assert e.value.address == 0x10 and e.value.access == "read"
    assert not isinstance(e.value, StackOverflow)
    assert_poisoned(sandbox)


def test_read_privileged_page(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(PageFault) as e:
        sandbox.call("ReadAddress", 0x100000)       # page tables: supervisor only
    assert e.value.address == 0x100000 and e.value.access == "read"


def test_write_code(sandbox: MultiUseSandbox, simpleguest: str) -> None:
    target = GuestBinary.from_file(simpleguest).entry
    with pytest.raises(PageFault) as e:
        sandbox.call("WriteAddress", target, 0)
    assert e.value.address == target and e.value.access == "write"
    assert_poisoned(sandbox)


def test_execute_on_heap(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(PageFault) as e:
        sandbox.call("ExecuteOnHeap")
    assert e.value.access == "execute"
    assert e.value.address == e.value.rip
    assert_poisoned(sandbox)


def test_stack_overflow(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(StackOverflow) as e:
        sandbox.call("StackOverflow", 100_000)
    assert e.value.access == "write"
    assert_poisoned(sandbox)


def test_shallow_recursion_is_fine(sandbox: MultiUseSandbox) -> None:
    assert sandbox.call("StackOverflow", 4) == 4


def test_port_outside_abi(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(PortViolation) as e:
        sandbox.call("OutbWithPort", 0x99, 1)
    assert isinstance(e.value, GeneralProtection)
    assert_poisoned(sandbox)


def test_trap_ports_denied_to_guest(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(PortViolation):
        sandbox.call("OutbWithPort", 0x4E, 0)         # a trap port: only CPL0 stubs may use it


def test_abort_with_message(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GuestAbort) as e:
        sandbox.call("GuestAbortWithMessage", 25, "Oh no")
    assert e.value.code == 25 and e.value.message == "Oh no"
    assert_poisoned(sandbox)


def test_abort_with_code(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GuestAbort) as e:
        sandbox.call("GuestAbortWithCode", 77)
    assert e.value.code == 77
    assert_poisoned(sandbox)


def test_guest_error_does_not_poison(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GuestError):
        sandbox.call("AddToStaticAndFail")
    assert sandbox.call("GetStatic") == 10


def test_privileged_instruction(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(GeneralProtection) as e:
        sandbox.call("Privileged")
    assert not isinstance(e.value, PortViolation) and e.value.vector == 13
    assert_poisoned(sandbox)


@pytest.mark.parametrize("fn,match", [("CorruptOutputSize", "length"),
                                      ("CorruptOutputMsgpack", "MessagePack")])
def test_corrupt_output(sandbox: MultiUseSandbox, fn: str, match: str) -> None:
    from snapcell.errors import GuestOutputError
    snap = sandbox.snapshot()
    with pytest.raises(GuestOutputError, match=match):
        sandbox.call(fn)
    assert_poisoned(sandbox)
    sandbox.restore(snap)
    assert sandbox.call("EchoI32", 3) == 3


def test_long_abort_message_truncated(sandbox: MultiUseSandbox) -> None:
    msg = "é" * 3000                       # 6000 bytes of UTF-8
    with pytest.raises(GuestAbort) as e:
        sandbox.call("GuestAbortWithMessage", 9, msg)
    assert e.value.code == 9
    assert 1024 < len(e.value.message.encode()) <= 4096
    assert msg.startswith(e.value.message)  # cut on a character boundary


def test_every_fault_recovers_by_restore(sandbox: MultiUseSandbox) -> None:
    snap = sandbox.snapshot()
    for call in (("TriggerException",), ("DivideByZero",), ("ReadAddress", 0x10),
                 ("WriteAddress", 0x401000, 1), ("ExecuteOnHeap",), ("Privileged",),
                 ("StackOverflow", 100_000), ("OutbWithPort", 0x99, 0),
                 ("CorruptOutputSize",), ("CorruptOutputMsgpack",),
                 ("GuestAbortWithMessage", 1, "x" * 2000)):
        with pytest.raises(PoisoningError):
            sandbox.call(*call)
        assert_poisoned(sandbox)
        sandbox.restore(snap)
        assert sandbox.call("Echo", "ok") == "ok"
