"""`Kvm`: the /dev/kvm file descriptor (system ioctls)."""

from __future__ import annotations

import ctypes
import fcntl
import os

from . import ioctls
from .structs import CPUID_MAX_ENTRIES, kvm_cpuid2
from .vm import Vm

DEV_KVM = "/dev/kvm"
DEVICE_ENV = "SNAPCELL_KVM_DEVICE"     # overrides the device path (used by the test-suite)


class KvmUnavailable(OSError):
    """/dev/kvm is missing, inaccessible or speaks an unexpected API version."""


class Kvm:
    """An open /dev/kvm. Thread-safe to share; creates VMs."""

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get(DEVICE_ENV, DEV_KVM)
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(e.errno, f"cannot open {path}: {e.strerror}") from e
        version = fcntl.ioctl(self.fd, ioctls.KVM_GET_API_VERSION, 0)
        if version != ioctls.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(0, f"{path}: KVM API version {version}, expected 12")
        self.vcpu_mmap_size: int = fcntl.ioctl(self.fd, ioctls.KVM_GET_VCPU_MMAP_SIZE, 0)
        self._cpuid: kvm_cpuid2 | None = None

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when unsupported, else a capability-specific value."""
        return fcntl.ioctl(self.fd, ioctls.KVM_CHECK_EXTENSION, cap)

    def supported_cpuid(self) -> kvm_cpuid2:
        """KVM_GET_SUPPORTED_CPUID (cached: it does not change while the module is loaded)."""
        if self._cpuid is None:
            c = kvm_cpuid2(nent=CPUID_MAX_ENTRIES)
            fcntl.ioctl(self.fd, ioctls.KVM_GET_SUPPORTED_CPUID, c)
            self._cpuid = c
        return self._cpuid

    def create_vm(self) -> Vm:
        """KVM_CREATE_VM."""
        return Vm(fcntl.ioctl(self.fd, ioctls.KVM_CREATE_VM, 0), self.vcpu_mmap_size)

    def close(self) -> None:
        """Close /dev/kvm (VMs already created stay valid)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_shared: Kvm | None = None


def shared_kvm() -> Kvm:
    """The process-wide /dev/kvm handle."""
    global _shared
    if _shared is None:
        _shared = Kvm()
    return _shared


_ = ctypes  # ctypes objects are passed to fcntl.ioctl through the buffer protocol
