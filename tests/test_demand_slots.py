"""KVM memory slots registered as a real guest first touches each chunk of its memory
(machine/slots.py): the guest never notices, and memory it never touches gets no slot."""

from __future__ import annotations

from snapcell.code import CodeSandbox
from snapcell.machine.slots import SLOT_CHUNK
from snapcell.sandbox.pool import default_pool


def touch(mib: int) -> str:
    """Code that writes one byte per page of `mib` MiB and sums them."""
    return f"b = bytearray({mib} << 20)\nb[::4096] = b'\\1' * ({mib} << 8)\nsum(b)"


def test_slots_follow_the_memory_the_guest_touches(kvm_ok: None) -> None:
    default_pool().clear()                     # a new machine: no slot but the system part's
    with CodeSandbox("python", memory_limit=128 << 20) as box:
        assert box.run("1 + 1").value == 2
        slots = box._sb._core.machine.slots                 # noqa: SLF001
        before = slots.count
        assert not slots.whole and 1 < before < slots.max_chunk_slots
        assert box.run(touch(24)).value == 24 << 8           # new chunks of the heap
        assert slots.count >= before + 2 and not slots.whole
        assert box.run("1 + 1").value == 2                    # the next run: restore + run
        # so many chunks that one slot over all memory costs less: traded mid-run
        need = (slots.max_chunk_slots - slots.count + 2) * SLOT_CHUNK + (24 << 20) >> 20
        assert need <= 112
        assert box.run(touch(need)).value == need << 8
        assert slots.whole and slots.count == 0
    with CodeSandbox("python") as box:                         # the pooled machine keeps it
        assert box._sb._core.machine.slots is slots            # noqa: SLF001
        assert box.run(touch(8)).value == 8 << 8
    default_pool().clear()
