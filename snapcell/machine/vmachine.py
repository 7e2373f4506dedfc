"""`Machine`: one micro-VM — a VM with one memory slot and one vCPU configured for a CPL3 guest.

The machine knows nothing of calls or messages: it runs the vCPU until the guest writes a byte
to a port, and decodes exceptions caught by the CPL0 stubs into `TrapFrame`s."""

from __future__ import annotations

import ctypes
import struct

from ..kvm import Kvm, ioctls
from ..kvm.structs import kvm_regs, kvm_sregs, kvm_xsave
from .cpu import (
    ERROR_CODE_VECTORS,
    RFLAGS_RESERVED1,
    TRAP_PORT_BASE,
    TRAP_VECTORS,
    configure_sregs,
    syscall_msrs,
)
from .exits import MachineFailure, TrapFrame
from .layout import IST1_BOTTOM, IST1_TOP, KSTACK_BOTTOM, KSTACK_TOP
from .memory import GuestMapping, MemoryImage

_FRAME = struct.Struct("<5Q")


class Machine:
    """A VM + vCPU whose memory is a private mapping of `image`."""

    def __init__(self, kvm: Kvm, image: MemoryImage, lstar: int) -> None:
        self.kvm = kvm
        self.vm = kvm.create_vm()
        self.vcpu = None
        self.memory: GuestMapping | None = None
        try:
            self.memory = GuestMapping(image)
            self.vm.set_user_memory_region(0, 0, image.size, self.memory.addr)
            self.vcpu = self.vm.create_vcpu(0)
            self.vcpu.set_cpuid2(kvm.supported_cpuid())
            self.base_sregs = configure_sregs(self.vcpu.get_sregs())
            self.vcpu.set_sregs(self.base_sregs)
            self.vcpu.set_msrs(syscall_msrs(lstar))
            self.initial_xsave = self.vcpu.get_xsave()
        except BaseException:
            self.close()
            raise
        self.run_struct = self.vcpu.run
        self._regs = kvm_regs()
        self._sregs = kvm_sregs()

    # ---------------------------------------------------------------- registers
    def set_entry(self, rip: int, rsp: int, **gprs: int) -> None:
        """Reset all GPRs to 0 (or `gprs`), and set RIP, RSP and RFLAGS = 0x2."""
        r = kvm_regs()
        for name, value in gprs.items():
            setattr(r, name, value)
        r.rip, r.rsp, r.rflags = rip, rsp, RFLAGS_RESERVED1
        assert self.vcpu is not None
        self.vcpu.set_regs(r)

    def get_regs(self) -> kvm_regs:
        """KVM_GET_REGS into a fresh structure."""
        assert self.vcpu is not None
        return self.vcpu.get_regs(kvm_regs())

    def set_regs(self, regs: kvm_regs) -> None:
        """KVM_SET_REGS."""
        assert self.vcpu is not None
        self.vcpu.set_regs(regs)

    def get_sregs(self) -> kvm_sregs:
        """KVM_GET_SREGS into a fresh structure."""
        assert self.vcpu is not None
        return self.vcpu.get_sregs(kvm_sregs())

    def set_fs_base(self, base: int) -> None:
        """Set the FS segment base (the guest's TLS pointer)."""
        assert self.vcpu is not None
        s = self.vcpu.get_sregs(self._sregs)
        s.fs.base = base
        self.vcpu.set_sregs(s)

    def reset_cpu(self) -> None:
        """Restore the host-built privileged state and clean FPU/SSE state (after a fault the
        vCPU may be anywhere, even at CPL0 in a stub)."""
        assert self.vcpu is not None
        self.vcpu.set_sregs(self.base_sregs)
        self.vcpu.set_xsave(self.initial_xsave)

    def get_xsave(self) -> kvm_xsave:
        """KVM_GET_XSAVE."""
        assert self.vcpu is not None
        return self.vcpu.get_xsave()

    # ---------------------------------------------------------------- running
    def run(self) -> int:
        """Run until the guest writes one byte to a port; return the port. Raises `MachineFailure`
        for any other exit and lets InterruptedError (a signal) propagate."""
        vcpu = self.vcpu
        assert vcpu is not None
        reason = vcpu.run_once()
        if reason == ioctls.KVM_EXIT_IO:
            io = self.run_struct.u.io
            if io.direction == ioctls.KVM_EXIT_IO_OUT and io.count == 1:
                return int(io.port)
            raise MachineFailure("IO", f"{'in' if io.direction == 0 else 'out'} port {io.port:#x} "
                                 f"size {io.size} count {io.count}")
        raise MachineFailure(*self.describe_exit(reason))

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
            raise MachineFailure("TRAP", f"exception {vector} with a corrupt kernel stack {sp:#x}")
        if vector in ERROR_CODE_VECTORS:
            err = self.memory.u64(sp)
            sp += 8
        rip, cs, rflags, rsp, ss = _FRAME.unpack_from(self.memory.view, sp)
        cr2 = int(self.vcpu.get_sregs(self._sregs).cr2)
        return TrapFrame(vector, err, rip, cs, rflags, rsp, ss, cr2)

    def close(self) -> None:
        """Release the vCPU, VM and memory mapping (idempotent)."""
        if self.vcpu is not None:
            self.vcpu.close()
            self.vcpu = None
        self.vm.close()
        if self.memory is not None:
            self.memory.close()
            self.memory = None


_ = ctypes
