"""Fixtures of the isolation suite: the adversary guest, its snapshots, and the fingerprint a
victim must reproduce exactly.

A *fingerprint* is what a sandbox computes and holds after one `Probe` call: Probe's result (a
checksum, taken inside the guest, of everything an earlier tenant could have left in reach:
uninitialised stack and heap, the ABI page, vector registers, MXCSR, x87 control word, FS/GS
base, RFLAGS) and a sha256, taken by the host, of the vCPU's registers, FS/GS base, XSAVE area
and every byte of guest memory — the system part included, but for the page directory's
present bits, which say which chunks of memory the machine has given a KVM slot so far
(machine/slots.py: the guest cannot read them; `page_directory_ok` checks them), and the kernel
stack, which holds the frame of the last page fault by which the guest first touched such a
chunk (`system_part_pristine` checks both right after every reset)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from snapcell import HostFunctions, MultiUseSandbox, SandboxConfiguration, Snapshot, UninitializedSandbox
from snapcell.guest.abi import ABI_GENERATION, ABI_SEED, ABI_SEED_SIZE
from snapcell.machine.layout import GUEST_BASE, KSTACK_BOTTOM, KSTACK_TOP
from snapcell.machine.memory import GuestMapping
from snapcell.machine.paging import PD_ADDR
from snapcell.machine.vmachine import Machine
from snapcell.sandbox.pool import default_pool
from snapcell.types import I32
from tests.conftest import guest_path

CONFIG = SandboxConfiguration(heap_size=8 << 20)


@dataclass(frozen=True)
class Fingerprint:
    """Probe's in-guest checksum and the host's hash of CPU state + all guest memory."""

    probe: int
    state: str


def fingerprint(sb: MultiUseSandbox) -> Fingerprint:
    """Call Probe and hash what the sandbox holds afterwards."""
    probe = sb.call("Probe")
    core = sb._core
    m = core.machine
    regs = m.get_regs()
    sregs = m.get_sregs()
    h = hashlib.sha256()
    h.update(bytes(regs))
    h.update(int(sregs.fs.base).to_bytes(8, "little") + int(sregs.gs.base).to_bytes(8, "little"))
    h.update(bytes(memoryview(m.get_xsave()).cast("B")))
    assert m.memory is not None
    view = m.memory.view              # all of it but the per-sandbox generation + seed
    assert page_directory_ok(m)
    h.update(view[:ABI_GENERATION])
    h.update(view[ABI_SEED + ABI_SEED_SIZE:KSTACK_BOTTOM])
    h.update(view[KSTACK_TOP:PD_ADDR])
    h.update(view[PD_ADDR + len(m.slots.pd):])
    return Fingerprint(probe, h.hexdigest())


def system_part_pristine(sb: MultiUseSandbox) -> bool:
    """Whether every byte below GUEST_BASE equals the host-built system image (but the
    generation + seed, which the host writes fresh on every reset)."""
    m = sb._core.machine
    assert m.memory is not None and m.system_image is not None
    have, want = bytearray(m.memory.view[:GUEST_BASE]), bytearray(m.system_image.read_view())
    have[ABI_GENERATION:ABI_SEED + ABI_SEED_SIZE] = want[ABI_GENERATION:ABI_SEED + ABI_SEED_SIZE]
    pd = slice(PD_ADDR, PD_ADDR + len(m.slots.pd))
    if not page_directory_ok(m):
        return False
    have[pd] = want[pd]
    return have == want


def page_directory_ok(m: Machine) -> bool:
    """Whether the machine's page directory is the system image's with exactly the entries of
    the chunks that have no KVM slot yet cleared (machine/slots.py)."""
    assert m.memory is not None and m.system_image is not None
    n = len(m.slots.pd)
    have = bytes(m.memory.view[PD_ADDR:PD_ADDR + n])
    want = bytes(m.system_image.read_view()[PD_ADDR:PD_ADDR + n])
    return have == bytes(m.slots.pd) and all(
        have[i:i + 8] in (want[i:i + 8], bytes(8)) for i in range(0, n, 8))


@pytest.fixture(scope="package", autouse=True)
def fixed_generation() -> Iterator[None]:
    """Every reset writes the same generation and seed, so that a fresh VM and a reused one can
    be compared byte for byte (the guest stores the generation it saw). That every sandbox gets
    a fresh one is tested with the code sandboxes (tests/code/)."""
    from snapcell.sandbox import core

    def write(memory: GuestMapping, seed: bytes | None = None) -> int:
        memory.write(ABI_GENERATION, struct.pack("<Q", 0x5EED) + bytes(range(ABI_SEED_SIZE)))
        return 0x5EED

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "write_generation", write)
        yield


@pytest.fixture(scope="package")
def adversary(kvm_ok: None) -> str:
    """Path of build/guests/adversary.elf."""
    return guest_path("adversary")


def _evolve(path: str, hf: HostFunctions | None = None) -> Snapshot:
    sb = UninitializedSandbox(path, config=CONFIG, host_functions=hf or host_functions()).evolve()
    snap = sb.snapshot()
    sb.close()
    return snap


def _echo(v: I32) -> I32:
    return v


def host_functions() -> HostFunctions:
    """The adversary's host functions: an echo; tests register misbehaving ones on top."""
    return HostFunctions().register("Echo", _echo)


@pytest.fixture(scope="package")
def attacker_snapshot(adversary: str) -> Snapshot:
    """The attacker's snapshot (also the victim's in the same-snapshot cases)."""
    return _evolve(adversary)


@pytest.fixture(scope="package")
def other_snapshot(adversary: str) -> Snapshot:
    """A second tenant's snapshot: same binary, its own image (the cold-map path on reuse)."""
    return _evolve(adversary)


def reference(snap: Snapshot) -> Fingerprint:
    """What a sandbox from `snap` computes on a fresh, never-pooled VM."""
    sb = MultiUseSandbox.from_snapshot(snap, host_functions=host_functions(), pooled=False)
    try:
        return fingerprint(sb)
    finally:
        sb.close()


@pytest.fixture(scope="package")
def references(attacker_snapshot: Snapshot, other_snapshot: Snapshot) -> dict[int, Fingerprint]:
    """Fresh-VM fingerprints by id() of the snapshot."""
    return {id(attacker_snapshot): reference(attacker_snapshot),
            id(other_snapshot): reference(other_snapshot)}


@pytest.fixture
def empty_pool() -> Iterator[None]:
    """An empty warm pool, so that the next sandbox gets exactly the machine last released."""
    default_pool().clear()
    yield
    default_pool().clear()
