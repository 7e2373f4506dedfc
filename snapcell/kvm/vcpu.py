"""`Vcpu`: one virtual CPU file descriptor and its shared kvm_run page (vCPU ioctls)."""

from __future__ import annotations

import ctypes
import fcntl
import os

from . import ioctls
from .libc import MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from .structs import (
    kvm_cpuid2,
    kvm_debugregs,
    kvm_msrs,
    kvm_regs,
    kvm_run,
    kvm_sregs,
    kvm_vcpu_events,
    kvm_xcrs,
    kvm_xsave,
)


class Vcpu:
    """A vCPU. `run` is the kvm_run structure shared with the kernel."""

    def __init__(self, fd: int, mmap_size: int) -> None:
        self.fd = fd
        self._mmap_size = mmap_size
        self.run_addr = mmap(mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd)
        self.run = kvm_run.from_address(self.run_addr)

    def run_once(self) -> int:
        """KVM_RUN until the next exit; returns kvm_run.exit_reason. Raises InterruptedError when a
        signal interrupted the ioctl (or immediate_exit was set).

        The argument (0) is left out on purpose: fcntl.ioctl first tries to read an explicit
        argument as a buffer, twice, raising and discarding a TypeError each time before
        accepting an int, which costs more than a microsecond per KVM_RUN once caches are cold."""
        fcntl.ioctl(self.fd, ioctls.KVM_RUN)
        return int(self.run.exit_reason)

    def io_data_address(self) -> int:
        """Address of the data of the current KVM_EXIT_IO."""
        return self.run_addr + int(self.run.u.io.data_offset)

    def get_regs(self, regs: kvm_regs | None = None) -> kvm_regs:
        """KVM_GET_REGS."""
        regs = regs if regs is not None else kvm_regs()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        """KVM_SET_REGS."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_REGS, regs)

    def get_sregs(self, sregs: kvm_sregs | None = None) -> kvm_sregs:
        """KVM_GET_SREGS."""
        sregs = sregs if sregs is not None else kvm_sregs()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        """KVM_SET_SREGS."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_SREGS, sregs)

    def get_xsave(self, xsave: kvm_xsave | None = None) -> kvm_xsave:
        """KVM_GET_XSAVE (x87/SSE/AVX state including MXCSR; KVM_GET_FPU loses MXCSR under PVM)."""
        xsave = xsave if xsave is not None else kvm_xsave()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_XSAVE, xsave)
        return xsave

    def set_xsave(self, xsave: kvm_xsave) -> None:
        """KVM_SET_XSAVE."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_XSAVE, xsave)

    def get_xcr0(self) -> int:
        """XCR0 of the vCPU (KVM_GET_XCRS)."""
        x = kvm_xcrs()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_XCRS, x)
        return next((int(x.xcrs[i].value) for i in range(min(x.nr_xcrs, 16)) if x.xcrs[i].xcr == 0), 0)

    def set_xcr0(self, value: int) -> None:
        """KVM_SET_XCRS with XCR0 = `value` (EINVAL when it names components the vCPU's CPUID
        does not offer, lacks x87, or has AVX without SSE)."""
        x = kvm_xcrs(nr_xcrs=1)
        x.xcrs[0].xcr, x.xcrs[0].value = 0, value
        fcntl.ioctl(self.fd, ioctls.KVM_SET_XCRS, x)

    def get_vcpu_events(self) -> kvm_vcpu_events:
        """KVM_GET_VCPU_EVENTS: pending/injected exception, interrupt and NMI state."""
        e = kvm_vcpu_events()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_VCPU_EVENTS, e)
        return e

    def set_vcpu_events(self, e: kvm_vcpu_events) -> None:
        """KVM_SET_VCPU_EVENTS."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_VCPU_EVENTS, e)

    def get_debugregs(self) -> kvm_debugregs:
        """KVM_GET_DEBUGREGS."""
        d = kvm_debugregs()
        fcntl.ioctl(self.fd, ioctls.KVM_GET_DEBUGREGS, d)
        return d

    def set_debugregs(self, d: kvm_debugregs) -> None:
        """KVM_SET_DEBUGREGS."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_DEBUGREGS, d)

    def set_cpuid2(self, cpuid: kvm_cpuid2) -> None:
        """KVM_SET_CPUID2."""
        fcntl.ioctl(self.fd, ioctls.KVM_SET_CPUID2, cpuid)

    def set_msrs(self, pairs: list[tuple[int, int]]) -> None:
        """KVM_SET_MSRS; raises OSError if the kernel accepted fewer than all of them."""
        m = kvm_msrs(len(pairs))(nmsrs=len(pairs))
        for i, (index, value) in enumerate(pairs):
            m.entries[i].index, m.entries[i].data = index, value
        n = fcntl.ioctl(self.fd, ioctls.KVM_SET_MSRS, m)
        if n != len(pairs):
            raise OSError(0, f"KVM_SET_MSRS accepted {n} of {len(pairs)} (refused {pairs[n][0]:#x})")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS."""
        m = kvm_msrs(len(indices))(nmsrs=len(indices))
        for i, index in enumerate(indices):
            m.entries[i].index = index
        n = fcntl.ioctl(self.fd, ioctls.KVM_GET_MSRS, m)
        return {int(m.entries[i].index): int(m.entries[i].data) for i in range(n)}

    def close(self) -> None:
        """Unmap kvm_run and close the vCPU fd."""
        if self.fd >= 0:
            munmap(self.run_addr, self._mmap_size)
            os.close(self.fd)
            self.fd = -1


_ = ctypes
