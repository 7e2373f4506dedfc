"""ctypes mirrors of the `<linux/kvm.h>` structures snapcell uses (x86-64)."""

from __future__ import annotations

import ctypes

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags")


class kvm_userspace_memory_region(ctypes.Structure):
    """KVM_SET_USER_MEMORY_REGION argument."""

    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_regs(ctypes.Structure):
    """General-purpose registers, RIP and RFLAGS (KVM_GET/SET_REGS)."""

    _fields_ = [(n, u64) for n in GPR_NAMES]


class kvm_segment(ctypes.Structure):
    """One segment register as KVM describes it."""

    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8),
                ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    """GDTR / IDTR."""

    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):
    """Segment, control and descriptor-table registers (KVM_GET/SET_SREGS)."""

    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment), ("gdt", kvm_dtable),
                ("idt", kvm_dtable), ("cr0", u64), ("cr2", u64), ("cr3", u64),
                ("cr4", u64), ("cr8", u64), ("efer", u64), ("apic_base", u64),
                ("interrupt_bitmap", u64 * 4)]


class kvm_xsave(ctypes.Structure):
    """The legacy 4 KiB XSAVE area (KVM_GET/SET_XSAVE): x87, SSE, AVX... state incl. MXCSR."""

    _fields_ = [("region", u32 * 1024)]


class kvm_xcr(ctypes.Structure):
    """One extended control register (XCR0 is number 0)."""

    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(ctypes.Structure):
    """KVM_GET/SET_XCRS argument."""

    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * 16), ("padding", u64 * 16)]


class kvm_debugregs(ctypes.Structure):
    """DR0-3, DR6, DR7 (KVM_GET/SET_DEBUGREGS)."""

    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_guest_debug(ctypes.Structure):
    """KVM_SET_GUEST_DEBUG argument."""

    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class kvm_msr_entry(ctypes.Structure):
    """One MSR index/value pair."""

    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


def kvm_msrs(n: int) -> type[ctypes.Structure]:
    """`struct kvm_msrs` with room for `n` entries."""

    class _kvm_msrs(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]

    return _kvm_msrs


class kvm_cpuid_entry2(ctypes.Structure):
    """One CPUID leaf/subleaf."""

    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


CPUID_MAX_ENTRIES = 256


class kvm_cpuid2(ctypes.Structure):
    """`struct kvm_cpuid2` with room for CPUID_MAX_ENTRIES entries."""

    _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * CPUID_MAX_ENTRIES)]


class kvm_dirty_log(ctypes.Structure):
    """KVM_GET_DIRTY_LOG argument (bitmap is a user pointer)."""

    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class kvm_run_io(ctypes.Structure):
    """kvm_run.io for KVM_EXIT_IO; data lives at kvm_run + data_offset."""

    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_fail_entry(ctypes.Structure):
    """kvm_run.fail_entry."""

    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_internal(ctypes.Structure):
    """kvm_run.internal for KVM_EXIT_INTERNAL_ERROR."""

    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_union(ctypes.Union):
    """The exit-specific union of kvm_run (256 bytes)."""

    _fields_ = [("io", kvm_run_io), ("fail_entry", kvm_run_fail_entry),
                ("internal", kvm_run_internal), ("pad", u8 * 256)]


class kvm_vcpu_events(ctypes.Structure):
    """`struct kvm_vcpu_events` (KVM_GET/SET_VCPU_EVENTS, and the events part of the sync-regs
    area): pending/injected exception, interrupt, NMI, interrupt shadow."""

    _fields_ = [("exception_injected", u8), ("exception_nr", u8), ("exception_has_error_code", u8),
                ("exception_pending", u8), ("exception_error_code", u32),
                ("interrupt_injected", u8), ("interrupt_nr", u8), ("interrupt_soft", u8),
                ("interrupt_shadow", u8),
                ("nmi_injected", u8), ("nmi_pending", u8), ("nmi_masked", u8), ("nmi_pad", u8),
                ("sipi_vector", u32), ("flags", u32),
                ("smi", u8 * 4), ("triple_fault_pending", u8), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


class kvm_run(ctypes.Structure):
    """The shared `struct kvm_run` page of a vCPU, up to and including the sync-regs area."""

    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", kvm_run_union),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("sync_regs", kvm_regs),
                ("sync_sregs", kvm_sregs), ("sync_events", kvm_vcpu_events)]


assert ctypes.sizeof(kvm_regs) == 144 and ctypes.sizeof(kvm_sregs) == 312
assert ctypes.sizeof(kvm_vcpu_events) == 64 and kvm_vcpu_events.flags.offset == 20
assert ctypes.sizeof(kvm_debugregs) == 128 and ctypes.sizeof(kvm_guest_debug) == 72
assert ctypes.sizeof(kvm_cpuid_entry2) == 40 and ctypes.sizeof(kvm_xsave) == 4096
assert kvm_run.exit_reason.offset == 8 and kvm_run.u.offset == 32
assert kvm_run.kvm_valid_regs.offset == 288 and kvm_run.sync_regs.offset == 304
