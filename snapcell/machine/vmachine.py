"""`Machine`: one micro-VM — a VM with its memory slots (registered as the guest touches its
memory, slots.py) and one vCPU configured for a CPL3 guest.

The machine knows nothing of calls or messages: it runs the vCPU until the guest writes a byte
to a port, and decodes exceptions caught by the CPL0 stubs into `TrapFrame`s. Its memory is a
`GuestMapping` whose contents are swapped by re-mapping images, so a machine can be reused for
another guest of the same memory size (see `MachinePool`)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import threading

from ..kvm import Kvm, ioctls
from ..kvm.structs import kvm_regs, kvm_run, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xsave
from .baselines import XCR0_X87_SSE, CpuBaseline, host_cpu
from .cpu import (
    CR4_OSXSAVE,
    ERROR_CODE_VECTORS,
    MSR_LSTAR,
    RFLAGS_RESERVED1,
    TRAP_PORT_BASE,
    TRAP_VECTORS,
    configure_sregs,
    syscall_msrs,
)
from .exits import MachineFailure, TrapFrame
from .layout import ABI_PAGE_ADDR, IST1_BOTTOM, IST1_TOP, KSTACK_BOTTOM, KSTACK_TOP, PAGE
from .memory import GuestMapping, MemoryImage
from .slots import DemandSlots

_FRAME = struct.Struct("<5Q")
# kvm_run from exit_reason (offset 8): exit_reason u32, 20 bytes up to the exit union at 32, then
# io.direction u8, io.size u8, io.port u16, io.count u32 — read as one little-endian u64.
_EXIT_OFFSET = kvm_run.exit_reason.offset
_EXIT_IO = struct.Struct("<I20xQ")
assert _EXIT_OFFSET + 24 == kvm_run.u.offset
# The one exit the ABI allows: KVM_EXIT_IO_OUT (direction 1) of size 1, count 1, any port.
_IO_ONE_BYTE_OUT_MASK = 0xFFFFFFFF_0000_FFFF
_IO_ONE_BYTE_OUT = (1 << 32) | (1 << 8) | ioctls.KVM_EXIT_IO_OUT
EXIT_AT = _EXIT_OFFSET
EXIT_UNPACK = _EXIT_IO.unpack_from
KVM_EXIT_IO = ioctls.KVM_EXIT_IO


def one_byte_out(port: int) -> int:
    """The io word (see _EXIT_IO) of a one-byte, count-1 `out` to `port`."""
    return _IO_ONE_BYTE_OUT | (port & 0xFFFF) << 16
_ioctl = fcntl.ioctl
_KVM_RUN, _KVM_SET_XSAVE = ioctls.KVM_RUN, ioctls.KVM_SET_XSAVE
# kvm_run's sync-regs area (offsets into the kvm_run page)
_U64 = struct.Struct("<Q")
_U64_MASK = (1 << 64) - 1
_DIRTY_REGS = kvm_run.kvm_dirty_regs.offset
_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
_DIRTY_BOTH = ioctls.KVM_SYNC_X86_REGS | ioctls.KVM_SYNC_X86_SREGS
_SYNC_REGS, _REGS_SIZE = kvm_run.sync_regs.offset, ctypes.sizeof(kvm_regs)
_SYNC_SREGS, _SREGS_SIZE = kvm_run.sync_sregs.offset, ctypes.sizeof(kvm_sregs)
_SYNC_EVENTS, _EVENTS_SIZE = kvm_run.sync_events.offset, ctypes.sizeof(kvm_vcpu_events)
# Events applied on every reset: nothing pending or injected (exception, interrupt, NMI), no
# interrupt shadow (flags select which optional fields KVM takes from the structure).
_CLEAR_EVENTS = bytes(kvm_vcpu_events(
    flags=ioctls.KVM_VCPUEVENT_VALID_NMI_PENDING | ioctls.KVM_VCPUEVENT_VALID_SHADOW))
_DIRTY_ALL = _DIRTY_BOTH | ioctls.KVM_SYNC_X86_EVENTS
_SYNC_FS_BASE = _SYNC_SREGS + kvm_sregs.fs.offset + kvm_segment.base.offset
_SYNC_GS_BASE = _SYNC_SREGS + kvm_sregs.gs.offset + kvm_segment.base.offset
_KVM_EXIT_IO = ioctls.KVM_EXIT_IO
_PAGE_FAULT_PORT = TRAP_PORT_BASE + 14


class Machine:
    """A VM + vCPU with `memory_size` bytes of guest memory at guest address 0 (KVM slots
    registered chunk by chunk as the guest touches them: `DemandSlots`)."""

    def __init__(self, kvm: Kvm, memory_size: int, baseline: CpuBaseline | None = None) -> None:
        self.kvm = kvm
        # CPUID can only be set before the first KVM_RUN: a machine serves one baseline's
        # CPUID for life (pools keep machines per `baseline_key`)
        self.baseline_key = baseline.key if baseline is not None else None
        self.cpu_setup: tuple[int, bool] | None = None     # (XCR0, CR4.OSXSAVE) applied
        self.baseline: CpuBaseline | None = None            # the baseline they came from
        self.memory_size = memory_size
        self.process = _process[0]     # KVM serves a VM only to the process that created it
        self.vm = kvm.create_vm()
        self.vcpu = None
        self.memory: GuestMapping | None = None
        try:
            self.memory = GuestMapping(memory_size)
            self.slots = DemandSlots(self.vm.set_user_memory_region, self.memory.addr,
                                     memory_size)
            self.vcpu = self.vm.create_vcpu(0)
            self.vcpu.set_cpuid2(baseline.cpuid_for(kvm.supported_cpuid()) if baseline is not None
                                 else kvm.supported_cpuid())
            self.base_sregs = configure_sregs(self.vcpu.get_sregs())
            self.vcpu.set_sregs(self.base_sregs)
            self.vcpu.set_msrs(syscall_msrs(0))
            self.initial_xsave = self.vcpu.get_xsave()
        except BaseException:
            self.close()
            raise
        self.lstar = 0
        self.system_image: MemoryImage | None = None   # what is mapped below / above GUEST_BASE
        self.guest_image: MemoryImage | None = None
        self.run_struct = self.vcpu.run
        self.fd = self.vcpu.fd                  # the vCPU fd and its kvm_run page as bytes:
        # what `run` (and Core's written-out first KVM_RUN of a call) use
        self.run_bytes = memoryview((ctypes.c_ubyte * ctypes.sizeof(kvm_run)).from_address(
            self.vcpu.run_addr)).cast("B")
        self._base_sregs_bytes = bytes(self.base_sregs)
        self.thread_id: int | None = None
        self._regs = kvm_regs()
        self._sregs = kvm_sregs()
        # Set by any exit after which KVM may hold state the host cannot see or reset: an `in`
        # or string I/O (KVM completes it on the next KVM_RUN, writing registers or memory of
        # whatever state is loaded by then), MMIO, SHUTDOWN, INTERNAL_ERROR, a failed ioctl.
        # A tainted machine is never reset or pooled again: it is closed and replaced.
        self.tainted = False
        self.stacks_written = False    # an exception frame was pushed since the last reset
        # The guest part equals `guest_image` and nothing ran since (`scrub`, when the machine
        # went back to the pool): the next reset to the same image skips the guest part.
        self.guest_clean = False

    # ---------------------------------------------------------------- reset
    def reset(self, system: MemoryImage, guest: MemoryImage, lstar: int,
              regs: kvm_regs | bytes, fs_base: int, gs_base: int,
              xsave: kvm_xsave | None) -> bool:
        """The one routine through which a machine gets a new state — for `restore()`, for
        `from_snapshot`, and for every reuse of a pooled machine: afterwards guest-visible
        state is exactly `system` + `guest` memory and the given user CPU state, whatever the
        previous guest did.

        - memory: every byte of [0, memory_size) equals the images (`load_images`), including
          the user-writable ABI page and the kernel stacks the CPU wrote exception frames to;
        - CPU: GPRs/RIP/RSP/RFLAGS, segment and control registers from the host template, FS/GS
          base, XSAVE (x87/SSE/AVX/PKRU), LSTAR; no pending or injected exception, interrupt or
          NMI and no interrupt shadow (kvm_vcpu_events in the sync-regs area);
        - kvm_run.immediate_exit cleared (a stale kill of the previous user).

        Refuses a tainted machine: its vCPU may still complete an instruction of the previous
        guest on the next KVM_RUN. Returns True when memory was reset by copying (warm)."""
        if self.tainted:
            raise MachineFailure("TAINTED", "this machine's vCPU may hold a pending operation "
                                 "of an earlier guest; it must be replaced, not reset")
        if self.process != _process[0]:
            # a fork's child: the kvm_run page is a shared mapping of the parent's vCPU, so
            # writing the sync-regs area here would change the parent's registers
            self.tainted = True
            raise MachineFailure("FORKED", _FORKED)
        try:
            warm = self.load_images(system, guest)
            self.set_syscall_entry(lstar)
            self.set_user_state(regs, fs_base, gs_base, xsave)
        except OSError as e:             # half reset: never to be used again
            raise self.ioctl_failure("reset", e) from None
        return warm

    def use_baseline(self, baseline: CpuBaseline) -> None:
        """Set the guest's CR4.OSXSAVE and XCR0 for `baseline` (skipped when unchanged; call
        before `reset`, which loads the control registers through the sync-regs area).
        CR4.OSXSAVE is set only when the baseline has AVX state: CPUID.1:ECX.OSXSAVE follows it
        even under PVM, so dispatching code takes no AVX path under a baseline without AVX.
        XCR0 limits the XSAVE state the guest may use where the hypervisor applies it
        (VT-x/SVM; PVM keeps the host's)."""
        if baseline is self.baseline:          # the common case: the pooled VM's last snapshot's
            return
        host_xcr0 = host_cpu(self.kvm).xcr0
        xcr0 = baseline.xcr0 & host_xcr0 if baseline.legacy is None else host_xcr0
        setup = (xcr0, baseline.avx_state and baseline.legacy is None)
        if setup == self.cpu_setup:
            self.baseline = baseline
            return
        assert self.vcpu is not None
        if setup[1]:
            self.base_sregs.cr4 |= CR4_OSXSAVE
        else:
            self.base_sregs.cr4 &= ~CR4_OSXSAVE
        self._base_sregs_bytes = bytes(self.base_sregs)
        try:
            self.vcpu.set_xcr0(xcr0 if setup[1] else xcr0 & XCR0_X87_SSE)
        except OSError as e:
            raise self.ioctl_failure("CPU baseline set-up", e) from None
        self.cpu_setup, self.baseline = setup, baseline

    # ---------------------------------------------------------------- memory
    def load_images(self, system: MemoryImage, guest: MemoryImage) -> bool:
        """Make all of guest memory equal `system` + `guest`. An image not mapped yet is
        mapped (MAP_FIXED, dropping every private page of that part); in a part whose image is
        already mapped, the private pages are copied back from the image instead, which keeps
        the guest's pages (and KVM's shadow page tables) warm — all but those the reset policy
        drops back onto the image (a large growth, machine/warmset.py), so that one run that
        dirtied much memory does not make every later reset copy it; nothing when `scrub` left
        it clean. Both parts are always covered: the system part holds the user-writable ABI
        page and the kernel stacks. Returns True when the guest part took the warm path."""
        memory = self.memory
        assert memory is not None
        guest_mapped = self.guest_image is guest
        if self.system_image is system:
            # The system part: only the user-writable ABI page and the kernel/IST stacks can
            # hold written bytes (everything else is supervisor-only and has its Accessed and
            # Dirty bits preset, see paging.py; the isolation suite checks the whole part).
            memory.copy_from(system, ABI_PAGE_ADDR, PAGE)
            if self.stacks_written:
                memory.copy_from(system, KSTACK_BOTTOM, IST1_TOP - KSTACK_BOTTOM)
        else:
            memory.map_system(system)
            self.slots.write_pd(memory.view)      # chunks without a slot: not present
            self.system_image = system
        self.stacks_written = False
        if guest_mapped:
            if not self.guest_clean:
                memory.reset_guest_pages(guest)
        else:
            memory.map_guest(guest)
            self.guest_image = guest
        self.guest_clean = False
        return guest_mapped

    def scrub(self) -> bool:
        """Reset the guest part to its image now, with the private pages kept warm beyond the
        reset policy's floor dropped (`GuestMapping.trim_guest_pages`), and mark it clean, so
        that the next reset to the same image has nothing to do there: a machine going back to
        the pool pays for what its last user left (a run that dirtied 64 MiB: their drop)
        instead of its next user. False (nothing done) when there is no live image to reset
        to."""
        memory, image = self.memory, self.guest_image
        if memory is None or image is None or image.closed or self.tainted \
                or self.process != _process[0]:
            return False
        memory.trim_guest_pages()
        memory.reset_guest_pages(image)
        self.guest_clean = True
        return True

    # ---------------------------------------------------------------- registers
    def set_syscall_entry(self, lstar: int) -> None:
        """Point MSR_LSTAR at the guest's syscall entry (skipped when unchanged)."""
        if lstar != self.lstar:
            assert self.vcpu is not None
            self.vcpu.set_msrs([(MSR_LSTAR, lstar)])
            self.lstar = lstar

    def set_user_state(self, regs: kvm_regs | bytes, fs_base: int, gs_base: int,
                       xsave: kvm_xsave | None) -> None:
        """Put the vCPU in a CPL3 state: host-built segment/control registers (nothing
        privileged comes from the caller), the given GPRs/RIP/RSP/RFLAGS (a kvm_regs or its
        bytes), FS/GS base and FPU.

        GPRs and segment registers go through kvm_run's sync-regs area (KVM_CAP_SYNC_REGS):
        KVM applies them at the next KVM_RUN, which saves two ioctls; the accessors below read
        the pending values while they are not yet applied. The area is written as bytes through
        the kvm_run view (this runs on every restore and from_snapshot)."""
        run = self.run_bytes
        run[_SYNC_SREGS:_SYNC_SREGS + _SREGS_SIZE] = self._base_sregs_bytes
        _U64.pack_into(run, _SYNC_FS_BASE, fs_base & _U64_MASK)
        _U64.pack_into(run, _SYNC_GS_BASE, gs_base & _U64_MASK)
        run[_SYNC_REGS:_SYNC_REGS + _REGS_SIZE] = regs if isinstance(regs, bytes) else bytes(regs)
        run[_SYNC_EVENTS:_SYNC_EVENTS + _EVENTS_SIZE] = _CLEAR_EVENTS
        _U64.pack_into(run, _DIRTY_REGS, _DIRTY_ALL)
        run[_IMMEDIATE_EXIT] = 0
        _ioctl(self.fd, _KVM_SET_XSAVE, xsave if xsave is not None else self.initial_xsave)

    def _flush_pending(self) -> None:
        """Apply pending sync-regs with ioctls (before reading or partially changing state)."""
        run = self.run_struct
        dirty = int(run.kvm_dirty_regs)
        if dirty:
            assert self.vcpu is not None
            if dirty & ioctls.KVM_SYNC_X86_SREGS:
                self.vcpu.set_sregs(run.sync_sregs)
            if dirty & ioctls.KVM_SYNC_X86_REGS:
                self.vcpu.set_regs(run.sync_regs)
            if dirty & ioctls.KVM_SYNC_X86_EVENTS:
                self.vcpu.set_vcpu_events(run.sync_events)
            run.kvm_dirty_regs = 0

    def entry_regs(self, rip: int, rsp: int) -> kvm_regs:
        """GPRs all 0, RIP, RSP, RFLAGS = 0x2 (reserved bit 1)."""
        r = kvm_regs()
        r.rip, r.rsp, r.rflags = rip, rsp, RFLAGS_RESERVED1
        return r

    def get_regs(self) -> kvm_regs:
        """KVM_GET_REGS into a fresh structure."""
        assert self.vcpu is not None
        self._flush_pending()
        return self.vcpu.get_regs(kvm_regs())

    def set_regs(self, regs: kvm_regs) -> None:
        """KVM_SET_REGS."""
        assert self.vcpu is not None
        self._flush_pending()
        self.vcpu.set_regs(regs)

    def get_sregs(self) -> kvm_sregs:
        """KVM_GET_SREGS into a fresh structure."""
        assert self.vcpu is not None
        self._flush_pending()
        return self.vcpu.get_sregs(kvm_sregs())

    def set_fs_base(self, base: int) -> None:
        """Set the FS segment base (the guest's TLS pointer)."""
        assert self.vcpu is not None
        self._flush_pending()
        s = self.vcpu.get_sregs(self._sregs)
        s.fs.base = base
        self.vcpu.set_sregs(s)

    def get_xsave(self) -> kvm_xsave:
        """KVM_GET_XSAVE."""
        assert self.vcpu is not None
        return self.vcpu.get_xsave()

    # ---------------------------------------------------------------- running
    def run(self) -> int:
        """Run until the guest writes one byte to a port; return the port. Raises `MachineFailure`
        for any other exit and lets InterruptedError (a signal) propagate.

        The hot path of every call: one KVM_RUN (Vcpu.run_once inlined) and one unpack of the
        exit reason and the io fields straight from the kvm_run page.

        Core.call_framed writes the first KVM_RUN of a call out itself, on this contract: what
        the ioctl raises is raised as `run_failed(error)`; the exit is read with
        `EXIT_UNPACK(run_bytes, EXIT_AT)` as (reason, io); any exit but (KVM_EXIT_IO,
        `one_byte_out(port)`) for a port below TRAP_PORT_BASE goes through `exit_port`, which
        keeps this machine's bookkeeping (taint, kernel stacks)."""
        try:
            _ioctl(self.fd, _KVM_RUN)       # no third argument: see Vcpu.run_once
        except BaseException as e:
            raise self.run_failed(e) from None
        reason, io = _EXIT_IO.unpack_from(self.run_bytes, _EXIT_OFFSET)
        return self.exit_port(reason, io)

    def run_failed(self, error: BaseException) -> BaseException:
        """What a KVM_RUN that raised `error` raises: InterruptedError (a signal) as it is; any
        other OSError as `ioctl_failure`'s MachineFailure; anything else (KeyboardInterrupt...)
        as it is. All but the signal taint this machine."""
        if isinstance(error, InterruptedError):
            return error
        if isinstance(error, OSError):
            return self.ioctl_failure("KVM_RUN", error)
        self.tainted = True
        return error

    def ioctl_failure(self, what: str, error: OSError) -> MachineFailure:
        """A failed vCPU ioctl as a MachineFailure, tainting this machine; it says so when the
        machine was created by another process (a fork's parent), which KVM refuses (EIO)."""
        self.tainted = True
        detail = str(error)
        if self.process != _process[0]:
            detail += f"; {_FORKED}"
        return MachineFailure(what, detail)

    def exit_port(self, reason: int, io: int) -> int:
        """The port of a one-byte `out` exit (`run`'s second half: `reason` and the io word as
        read from kvm_run); MachineFailure, tainting the machine, for any other exit."""
        while reason == _KVM_EXIT_IO and io & _IO_ONE_BYTE_OUT_MASK == _IO_ONE_BYTE_OUT:
            port: int = io >> 16 & 0xFFFF
            if port < TRAP_PORT_BASE:
                return port
            self.stacks_written = True       # a CPL0 stub: the CPU wrote a frame on the kernel
            # or IST stack (reset copies them back). The guest's first touch of a chunk of
            # memory without a KVM slot: register it and resume the guest (slots.py).
            if port != _PAGE_FAULT_PORT or not self._fault_in():
                return port
            try:
                _ioctl(self.fd, _KVM_RUN)
            except BaseException as e:
                raise self.run_failed(e) from None
            reason, io = _EXIT_IO.unpack_from(self.run_bytes, _EXIT_OFFSET)
        # Anything else may leave an operation half done inside KVM (an `in` or `ins` is
        # completed on the next KVM_RUN of this vCPU, into whatever state is loaded then).
        self.tainted = True
        if reason == _KVM_EXIT_IO:
            run_io = self.run_struct.u.io
            if run_io.direction == ioctls.KVM_EXIT_IO_IN:
                raise MachineFailure("IO", f"the guest read from I/O port {run_io.port:#x} (in, "
                                     f"size {run_io.size}, count {run_io.count}); guest ports are "
                                     "write-only")
            raise MachineFailure("IO", f"output to I/O port {run_io.port:#x} of size "
                                 f"{run_io.size}, count {run_io.count}; the ABI takes one "
                                 "one-byte `out` per exit")
        raise MachineFailure(*self.describe_exit(reason))

    def _fault_in(self) -> bool:
        """At the #PF stub's exit: True when the fault was the guest's first touch of a chunk
        without a KVM slot, now registered and mapped in the page directory."""
        assert self.vcpu is not None and self.memory is not None
        try:
            if not self.slots.fault_in(int(self.vcpu.get_sregs(self._sregs).cr2)):
                return False
        except OSError as e:
            raise self.ioctl_failure("memory slot registration", e) from None
        self.slots.write_pd(self.memory.view)
        return True

    def describe_exit(self, reason: int) -> tuple[str, str]:
        """Name and detail of a non-IO exit."""
        run = self.run_struct
        name = ioctls.EXIT_NAMES.get(reason, str(reason))
        if reason == ioctls.KVM_EXIT_INTERNAL_ERROR:
            internal = run.u.internal
            data = ", ".join(hex(internal.data[i]) for i in range(min(internal.ndata, 16)))
            return name, f"suberror {internal.suberror} [{data}]"
        if reason == ioctls.KVM_EXIT_FAIL_ENTRY:
            return name, f"hardware reason {run.u.fail_entry.hardware_entry_failure_reason:#x}"
        return name, ""

    @staticmethod
    def trap_vector(port: int) -> int | None:
        """The exception vector a port write stands for, or None for an ABI port."""
        v = port - TRAP_PORT_BASE
        return v if 0 <= v < TRAP_VECTORS else None

    def trap_frame(self, vector: int) -> TrapFrame:
        """Read the exception frame the CPU pushed on the kernel (or IST) stack. The vCPU is
        stopped at the stub's `out`, so RSP points at [error code,] RIP, CS, RFLAGS, RSP, SS."""
        assert self.vcpu is not None and self.memory is not None
        regs = self.vcpu.get_regs(self._regs)
        sp = int(regs.rsp)
        err = None
        frame_size = _FRAME.size + (8 if vector in ERROR_CODE_VECTORS else 0)
        in_kstack = KSTACK_BOTTOM <= sp and sp + frame_size <= KSTACK_TOP
        in_ist = IST1_BOTTOM <= sp and sp + frame_size <= IST1_TOP
        if not (in_kstack or in_ist):
            self.tainted = True
            raise MachineFailure("TRAP", f"exception {vector} with a corrupt kernel stack {sp:#x}")
        if vector in ERROR_CODE_VECTORS:
            err = self.memory.u64(sp)
            sp += 8
        rip, cs, rflags, rsp, ss = _FRAME.unpack_from(self.memory.view, sp)
        cr2 = int(self.vcpu.get_sregs(self._sregs).cr2)
        return TrapFrame(vector, err, rip, cs, rflags, rsp, ss, cr2, sp)

    def close(self) -> None:
        """Release the vCPU, VM and memory mapping (idempotent)."""
        self.fd = -1
        run_bytes = self.__dict__.pop("run_bytes", None)
        if run_bytes is not None:          # the kvm_run page is unmapped with the vCPU
            run_bytes.release()
        if self.vcpu is not None:
            self.vcpu.close()
            self.vcpu = None
        self.vm.close()
        if self.memory is not None:
            self.memory.close()
            self.memory = None


# Bumped in every forked child (os.register_at_fork): a machine made before the fork belongs to
# the parent's process, which alone KVM serves, and shares its kvm_run page with the parent.
_process = [0]
_FORKED = ("this VM belongs to the process that created it (before a fork): create sandboxes "
           "in the process that uses them, or restore() this one, which moves it to a VM of "
           "this process")


def _after_fork_in_child() -> None:
    _process[0] += 1


def forks() -> int:
    """How many forks separate this process from the one that imported snapcell: an object
    that records it at creation can tell, cheaply, that it was made in a fork's parent."""
    return _process[0]


os.register_at_fork(after_in_child=_after_fork_in_child)


class MachinePool:
    """Idle machines kept warm per memory size, so that creating a sandbox from a snapshot does
    not pay for KVM_CREATE_VM/VCPU (~0.5 ms) and teardown. Bounded; thread-safe."""

    def __init__(self, kvm: Kvm, max_idle_per_size: int = 8, max_idle_total: int = 64) -> None:
        self.kvm = kvm
        self.max_idle_per_size = max_idle_per_size
        self.max_idle_total = max_idle_total
        self._idle: dict[tuple[int, object], list[Machine]] = {}   # by (memory size, baseline key)
        self._total = 0                        # machines in _idle
        self._lock = threading.Lock()
        self.created = 0
        self.reused = 0

    def acquire(self, memory_size: int, image: MemoryImage | None = None,
                baseline: CpuBaseline | None = None) -> Machine:
        """An idle machine of that size and CPU baseline — preferably one that last ran `image`,
        whose memory can be reset by copying instead of re-mapping — or a new one."""
        with self._lock:
            idle = self._idle.get((memory_size, baseline.key if baseline is not None else None))
            if idle:
                self.reused += 1
                self._total -= 1
                for i in range(len(idle) - 1, -1, -1):
                    if idle[i].guest_image is image:
                        return idle.pop(i)
                return idle.pop()
            self.created += 1
        return Machine(self.kvm, memory_size, baseline)

    def release(self, machine: Machine) -> None:
        """Return a machine. It keeps its memory mapping (the next user of the same snapshot resets
        it by copying; every user resets it with `Machine.reset`), its guest part reset here
        (`Machine.scrub`: a machine that a user's runs bloated comes back like a new one, and
        its last user pays for that, not the next); tainted machines and machines beyond the
        pool's bounds are closed."""
        if machine.memory is None or machine.vcpu is None:
            return
        key = (machine.memory_size, machine.baseline_key)
        if machine.tainted or self._total >= self.max_idle_total \
                or len(self._idle.get(key, ())) >= self.max_idle_per_size:   # (re-checked below)
            machine.close()
            return
        try:
            machine.scrub()
        except OSError:
            machine.close()
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle_per_size and self._total < self.max_idle_total:
                idle.append(machine)
                self._total += 1
                return
        machine.close()

    def idle_count(self) -> int:
        """Machines waiting in the pool."""
        with self._lock:
            return self._total

    def forget_after_fork(self) -> None:
        """In a forked child: the idle machines are the parent's (their VMs belong to the
        parent's address space; KVM refuses them here), and the lock may have been held by
        another thread of the parent. Drop them, without the lock and without closing them
        now: a child that exits or execs at once (the usual fork) pays nothing for them."""
        self._idle, self._total, self._lock = {}, 0, threading.Lock()

    def clear(self) -> None:
        """Close every idle machine."""
        with self._lock:
            machines = [m for v in self._idle.values() for m in v]
            self._idle.clear()
            self._total = 0
        for m in machines:
            m.close()
