"""KVM memory slots registered as a real guest first touches each chunk of its memory
(machine/slots.py): the guest never notices, and memory it never touches gets no slot."""

from __future__ import annotations

from snapcell.code import CodeSandbox
from snapcell.sandbox.pool import default_pool

TOUCH = "b = bytearray(40 << 20)\nb[::4096] = b'\\1' * (10 << 10)\nsum(b)"


def test_slots_follow_the_memory_the_guest_touches(kvm_ok: None) -> None:
    default_pool().clear()                     # a new machine: no slot but the system part's
    with CodeSandbox("python", memory_limit=64 << 20) as box:
        assert box.run("1 + 1").value == 2
        slots = box._sb._core.machine.slots                 # noqa: SLF001
        before = slots.count
        assert not slots.whole and 1 < before < slots.chunks
        assert box.run(TOUCH).value == 10 << 10                # 40 MiB: new chunks of the heap
        assert slots.whole or slots.count >= before + 2
        assert box.run("1 + 1").value == 2                    # the next run: restore + run
    with CodeSandbox("python") as box:                         # the pooled machine keeps them
        assert box._sb._core.machine.slots is slots            # noqa: SLF001
        assert box.run(TOUCH).value == 10 << 10
    default_pool().clear()
