"""Guest ABI constants (docs/guest-abi.md); mirrored by sdk/snapcell_abi.h."""

from __future__ import annotations

from ..machine.layout import ABI_PAGE_ADDR

ABI_VERSION = 1
ABI_MAGIC = 0x3142414C4C45434E          # "NCELLAB1" little-endian

# Ports granted to CPL3 by the TSS I/O bitmap
OUT_RETURN = 0x10
OUT_HOSTCALL = 0x11
OUT_SYSCALL = 0x12
OUT_ABORT = 0x13
GUEST_PORTS = (OUT_RETURN, OUT_HOSTCALL, OUT_SYSCALL, OUT_ABORT)

# ABI page fields (u64 each)
ABI_MAGIC_OFF = ABI_PAGE_ADDR + 0x00
ABI_VERSION_OFF = ABI_PAGE_ADDR + 0x08
ABI_INPUT_ADDR = ABI_PAGE_ADDR + 0x10
ABI_INPUT_SIZE = ABI_PAGE_ADDR + 0x18
ABI_OUTPUT_ADDR = ABI_PAGE_ADDR + 0x20
ABI_OUTPUT_SIZE = ABI_PAGE_ADDR + 0x28
ABI_HEAP_ADDR = ABI_PAGE_ADDR + 0x30
ABI_HEAP_SIZE = ABI_PAGE_ADDR + 0x38
ABI_STACK_TOP = ABI_PAGE_ADDR + 0x40
ABI_GENERATION = ABI_PAGE_ADDR + 0x48    # u64: new on every from_snapshot / restore
ABI_SEED = ABI_PAGE_ADDR + 0x50          # 32 fresh random bytes, written with the generation
ABI_SEED_SIZE = 32
SYSCALL_NR = ABI_PAGE_ADDR + 0x80
SYSCALL_ARGS = ABI_PAGE_ADDR + 0x88      # 6 x u64
SYSCALL_RESULT = ABI_PAGE_ADDR + 0xB8

SYSCALL_ENTRY_SYMBOL = "__sc_syscall_entry"
DISPATCH_SYMBOL = "main"
FRAME_HEADER = 4                          # u32 little-endian length before each message
TABLE_TAG = "snapcell"
