"""Host-built privileged CPU state for a CPL3 guest: GDT, TSS with I/O permission bitmap, IDT,
CPL0 trap stubs, and the segment/control registers and MSRs that go with them."""

from __future__ import annotations

import struct

from ..kvm.structs import kvm_segment, kvm_sregs
from .layout import GDT_ADDR, IDT_ADDR, IST1_TOP, KSTACK_TOP, STUBS_ADDR, TSS_ADDR
from .paging import PML4_ADDR

# Selectors. GDT order kernel code, kernel data, user code32, user data, user code64, TSS makes
# the STAR MSR layout work (SYSRET: CS = STAR[63:48]+16, SS = STAR[63:48]+8, RPL 3).
KERNEL_CS, KERNEL_DS, USER_CS32, USER_DS, USER_CS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x2B, 0x30

TSS_IOMAP_OFFSET = 0x68          # 104-byte 64-bit TSS, then the I/O permission bitmap
IOMAP_PORTS = 256                # bitmap covers ports 0..255; a port beyond → #GP
TSS_LIMIT = TSS_IOMAP_OFFSET + IOMAP_PORTS // 8   # inclusive limit: includes the 0xFF terminator
TRAP_PORT_BASE = 0x40            # CPL0 stub for vector v does `out %al, $(0x40+v)`
TRAP_VECTORS = 32
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
BREAKPOINT_VECTOR, DOUBLE_FAULT_VECTOR = 3, 8
STUB_STRIDE = 16

# MSRs (Intel SDM Vol. 4)
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16,
                                                         1 << 18, 1 << 31)
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE = 1 << 5, 1 << 9, 1 << 10, 1 << 18
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
RFLAGS_RESERVED1 = 1 << 1
RFLAGS_TF = 1 << 8


def gdt_bytes() -> bytes:
    """The GDT: null, kernel code64, kernel data, user code32, user data, user code64, TSS64."""
    tss_desc_lo = (TSS_LIMIT & 0xFFFF) | ((TSS_ADDR & 0xFFFFFF) << 16) | (0x89 << 40) \
        | (((TSS_LIMIT >> 16) & 0xF) << 48) | (((TSS_ADDR >> 24) & 0xFF) << 56)
    entries = [0,
               0x00AF9B000000FFFF,   # 0x08 code64 DPL0 (L=1)
               0x00CF93000000FFFF,   # 0x10 data DPL0
               0x00CFFB000000FFFF,   # 0x18 code32 DPL3 (only there for the STAR layout)
               0x00CFF3000000FFFF,   # 0x20 data DPL3
               0x00AFFB000000FFFF,   # 0x28 code64 DPL3
               tss_desc_lo, TSS_ADDR >> 32]
    return struct.pack(f"<{len(entries)}Q", *entries)


def tss_bytes(user_ports: tuple[int, ...]) -> bytes:
    """64-bit TSS: RSP0, IST1, and an I/O bitmap granting exactly `user_ports` to CPL3 (PVM ignores
    RFLAGS.IOPL, so the bitmap is the only gate). Bit = 1 denies."""
    tss = bytearray(TSS_IOMAP_OFFSET + IOMAP_PORTS // 8 + 1)
    struct.pack_into("<Q", tss, 0x04, KSTACK_TOP)
    struct.pack_into("<Q", tss, 0x24, IST1_TOP)
    struct.pack_into("<H", tss, 0x66, TSS_IOMAP_OFFSET)
    bitmap = bytearray(b"\xff" * (IOMAP_PORTS // 8 + 1))   # last byte: required 0xFF terminator
    for p in user_ports:
        if not 0 <= p < IOMAP_PORTS or TRAP_PORT_BASE <= p < TRAP_PORT_BASE + TRAP_VECTORS:
            raise ValueError(f"port {p:#x} cannot be granted to the guest")
        bitmap[p // 8] &= ~(1 << (p % 8)) & 0xFF
    tss[TSS_IOMAP_OFFSET:] = bitmap
    return bytes(tss)


def stub_address(vector: int) -> int:
    """Address of the CPL0 stub for an exception vector."""
    return STUBS_ADDR + STUB_STRIDE * vector


def stubs_bytes() -> bytes:
    """CPL0 stubs: `out %al, $(0x40+v)` (E6 ib) [`add $8, %rsp` (48 83 C4 08) to drop the error
    code] `iretq` (48 CF). They clobber nothing, so a resumed debug trap continues transparently."""
    code = bytearray(STUB_STRIDE * TRAP_VECTORS)
    for v in range(TRAP_VECTORS):
        stub = bytes([0xE6, TRAP_PORT_BASE + v])
        if v in ERROR_CODE_VECTORS:
            stub += bytes([0x48, 0x83, 0xC4, 0x08])
        stub += bytes([0x48, 0xCF])
        code[STUB_STRIDE * v:STUB_STRIDE * v + len(stub)] = stub
    return bytes(code)


def idt_bytes() -> bytes:
    """256 gates; 0-31 are 64-bit interrupt gates to the stubs (DPL0, except #BP at DPL3 so that
    `int3` works; #DF on IST1 so a broken kernel stack cannot triple-fault)."""
    idt = bytearray(16 * 256)
    for v in range(TRAP_VECTORS):
        h = stub_address(v)
        dpl = 3 if v == BREAKPOINT_VECTOR else 0
        ist = 1 if v == DOUBLE_FAULT_VECTOR else 0
        lo = (h & 0xFFFF) | (KERNEL_CS << 16) | (ist << 32) | (((1 << 7) | (dpl << 5) | 0xE) << 40) \
            | (((h >> 16) & 0xFFFF) << 48)
        struct.pack_into("<QQ", idt, 16 * v, lo, h >> 32)
    return bytes(idt)


def system_chunks(user_ports: tuple[int, ...]) -> list[tuple[int, bytes]]:
    """(guest address, bytes) for the GDT, IDT, TSS and stubs."""
    return [(GDT_ADDR, gdt_bytes()), (IDT_ADDR, idt_bytes()), (TSS_ADDR, tss_bytes(user_ports)),
            (STUBS_ADDR, stubs_bytes())]


def configure_sregs(s: kvm_sregs) -> kvm_sregs:
    """Flat 64-bit long mode at CPL3 with our GDT/IDT/TSS and page tables."""
    code = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_CS, type=11, present=1, dpl=3, db=0,
                       s=1, l=1, g=1)
    data = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_DS, type=3, present=1, dpl=3, db=1,
                       s=1, l=0, g=1)
    s.cs = code
    s.ds = s.es = s.ss = data
    s.fs = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_DS, type=3, present=1, dpl=3, db=1,
                       s=1, l=0, g=1)
    s.gs = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_DS, type=3, present=1, dpl=3, db=1,
                       s=1, l=0, g=1)
    s.tr = kvm_segment(base=TSS_ADDR, limit=TSS_LIMIT, selector=TSS_SEL, type=11, present=1, s=0)
    s.ldt = kvm_segment(unusable=1)
    s.gdt.base, s.gdt.limit = GDT_ADDR, len(gdt_bytes()) - 1
    s.idt.base, s.idt.limit = IDT_ADDR, 16 * 256 - 1
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    s.cr2 = 0
    s.cr3 = PML4_ADDR
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    s.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
    return s


def syscall_msrs(lstar: int) -> list[tuple[int, int]]:
    """STAR/LSTAR/SFMASK: `syscall` jumps to `lstar` (under PVM it stays at CPL3)."""
    return [(MSR_STAR, (0x18 << 48) | (KERNEL_CS << 32)), (MSR_LSTAR, lstar), (MSR_CSTAR, 0),
            (MSR_SFMASK, 0)]
