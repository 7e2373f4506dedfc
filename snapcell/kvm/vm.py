"""`Vm`: one KVM virtual machine file descriptor (VM ioctls)."""

from __future__ import annotations

import fcntl
import os

from . import ioctls
from .structs import kvm_userspace_memory_region
from .vcpu import Vcpu


class Vm:
    """A KVM VM: memory slots and vCPUs."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size      # of each vCPU's kvm_run mapping (from /dev/kvm)
        self._region = kvm_userspace_memory_region()

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, userspace_addr: int,
                               flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION (size 0 deletes the slot)."""
        r = self._region
        r.slot, r.flags, r.guest_phys_addr = slot, flags, guest_phys_addr
        r.memory_size, r.userspace_addr = size, userspace_addr
        fcntl.ioctl(self.fd, ioctls.KVM_SET_USER_MEMORY_REGION, r)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU, and map its kvm_run page."""
        fd = fcntl.ioctl(self.fd, ioctls.KVM_CREATE_VCPU, index)
        try:
            return Vcpu(fd, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the VM fd (the kernel frees the VM once its vCPUs are closed too)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
