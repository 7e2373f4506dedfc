"""KVM memory slots registered as a real guest first touches each chunk of its memory
(machine/slots.py): the guest never notices, and memory it never touches gets no slot."""

from __future__ import annotations

from snapcell import HostFunctions, MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.code import CodeSandbox
from snapcell.machine.slots import SLOT_CHUNK
from snapcell.sandbox.pool import default_pool

from .adversarial.conftest import host_functions as adversary_functions
from .adversarial.conftest import page_directory_ok, system_part_pristine
from .conftest import guest_path, make_host_functions


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


def test_a_pooled_machine_keeps_its_slots_under_another_system_image(kvm_ok: None) -> None:
    """A machine moving to a guest of the same memory size but another system image (page
    tables of other segments) writes its own page directory into them: the chunks it has no
    slot for stay not present, and the new guest faults them in like any other."""
    def evolve(name: str, hf: HostFunctions, heap: int) -> Snapshot:
        with UninitializedSandbox(guest_path(name), config=SandboxConfiguration(
                heap_size=heap), host_functions=hf).evolve() as sb:
            return sb.snapshot()

    hf_a, hf_b = make_host_functions(), adversary_functions()
    a = evolve("simpleguest", hf_a, 64 << 20)
    b = evolve("adversary", hf_b, 64 << 20)
    b = evolve("adversary", hf_b, (64 << 20) + a.layout.memory_size - b.layout.memory_size)
    assert a.layout.memory_size == b.layout.memory_size
    default_pool().clear()
    with MultiUseSandbox.from_snapshot(a, host_functions=hf_a) as sa:
        sa.call("NoOp")
        machine = sa._core.machine
        system_a = machine.system_image
        assert 0 in bytes(machine.slots.registered)      # chunks without a slot
    with MultiUseSandbox.from_snapshot(b, host_functions=hf_b) as sb:
        assert sb._core.machine is machine and machine.system_image is not system_a
        assert page_directory_ok(machine) and system_part_pristine(sb)
        sb.call("Probe")
        assert page_directory_ok(machine)
    default_pool().clear()
