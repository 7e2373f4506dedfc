"""KVM ioctl request numbers and capability/exit constants, all in one place.

Numbers are computed with the Linux `_IOC` encoding from `<linux/kvm.h>` and the sizes of the
structures in :mod:`snapcell.kvm.structs`; the test-suite cross-checks a few against their literal
values.
"""

from __future__ import annotations

KVMIO = 0xAE

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
# VM fd
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, 16)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)
# vCPU fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, 144)
KVM_SET_REGS = _iow(0x82, 144)
KVM_GET_SREGS = _ior(0x83, 312)
KVM_SET_SREGS = _iow(0x84, 312)
KVM_GET_MSRS = _iowr(0x88, 8)
KVM_SET_MSRS = _iow(0x89, 8)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_SET_GUEST_DEBUG = _iow(0x9B, 72)
KVM_GET_VCPU_EVENTS = _ior(0x9F, 64)
KVM_SET_VCPU_EVENTS = _iow(0xA0, 64)
KVM_GET_DEBUGREGS = _ior(0xA1, 128)
KVM_SET_DEBUGREGS = _iow(0xA2, 128)
KVM_GET_XSAVE = _ior(0xA4, 4096)
KVM_SET_XSAVE = _iow(0xA5, 4096)
KVM_GET_XCRS = _ior(0xA6, 392)
KVM_SET_XCRS = _iow(0xA7, 392)

KVM_API_VERSION = 12

# KVM_CHECK_EXTENSION capabilities used by snapcell
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_SYNC_REGS = 74
KVM_CAP_IMMEDIATE_EXIT = 136

# kvm_run.exit_reason
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "UNKNOWN", KVM_EXIT_EXCEPTION: "EXCEPTION", KVM_EXIT_IO: "IO",
    KVM_EXIT_HYPERCALL: "HYPERCALL", KVM_EXIT_DEBUG: "DEBUG", KVM_EXIT_HLT: "HLT",
    KVM_EXIT_MMIO: "MMIO", KVM_EXIT_SHUTDOWN: "SHUTDOWN", KVM_EXIT_FAIL_ENTRY: "FAIL_ENTRY",
    KVM_EXIT_INTR: "INTR", KVM_EXIT_INTERNAL_ERROR: "INTERNAL_ERROR",
    KVM_EXIT_SYSTEM_EVENT: "SYSTEM_EVENT",
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.kvm_valid_regs / kvm_dirty_regs
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

# kvm_vcpu_events.flags
KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SHADOW = 1 << 2

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
