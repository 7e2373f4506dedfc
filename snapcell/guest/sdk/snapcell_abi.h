/*
 * snapcell guest ABI, version 1: constants of docs/guest-abi.md.
 *
 * The host mirror is snapcell/guest/abi.py; the two must agree byte for byte.
 * Usable from C and from assembly (no C declarations outside __ASSEMBLER__ guards).
 */
#ifndef SNAPCELL_ABI_H
#define SNAPCELL_ABI_H

/* ---- Ports (the guest leaves the VM with `out` to one of these) ---------------------------- */
#define SC_OUT_RETURN   0x10  /* init finished (output = function table) / call finished (output = result) */
#define SC_OUT_HOSTCALL 0x11  /* output holds a host-call request; on resume the input holds the reply */
#define SC_OUT_SYSCALL  0x12  /* the ABI page syscall block holds a syscall; on resume `result` is set */
#define SC_OUT_ABORT    0x13  /* output holds [code, message]; the guest never resumes */
#define SC_OUT_TRAP_BASE 0x40 /* 0x40 + vector: CPL0 trap stubs only (denied to CPL3) */

/* ---- Memory map ---------------------------------------------------------------------------- */
#define SC_PAGE_SIZE    0x1000
#define SC_GUEST_BASE   0x400000      /* lowest address of the guest's PT_LOAD segments */
#define SC_MAX_MEMORY   0x40000000    /* 1 GiB: total guest memory (top of stack) at most */

/* ---- ABI page ------------------------------------------------------------------------------ */
#define SC_ABI_PAGE_ADDR 0x5000
#define SC_ABI_MAGIC     0x3142414C4C45434EULL /* "NCELLAB1" read as a little-endian u64 */
#define SC_ABI_VERSION   1

/* Offsets of the little-endian u64 fields inside the ABI page. */
#define SC_ABI_OFF_MAGIC        0x00
#define SC_ABI_OFF_VERSION      0x08
#define SC_ABI_OFF_INPUT_ADDR   0x10
#define SC_ABI_OFF_INPUT_SIZE   0x18
#define SC_ABI_OFF_OUTPUT_ADDR  0x20
#define SC_ABI_OFF_OUTPUT_SIZE  0x28
#define SC_ABI_OFF_HEAP_ADDR    0x30
#define SC_ABI_OFF_HEAP_SIZE    0x38
#define SC_ABI_OFF_STACK_TOP    0x40
#define SC_ABI_OFF_GENERATION   0x48  /* u64, changed by the host on every from_snapshot/restore */
#define SC_ABI_OFF_SEED         0x50  /* 32 fresh random bytes (0x50..0x6F), written with it */
#define SC_ABI_SEED_SIZE        32
#define SC_ABI_OFF_SYSCALL_NR   0x80
#define SC_ABI_OFF_SYSCALL_ARGS 0x88  /* args[0..5] at 0x88, 0x90, 0x98, 0xA0, 0xA8, 0xB0 */
#define SC_ABI_OFF_SYSCALL_RESULT 0xB8 /* set by the host */

/* ---- Messages ------------------------------------------------------------------------------ */
#define SC_FRAME_HEADER 4             /* u32 little-endian length before each MessagePack message */
#define SC_TABLE_TAG    "snapcell"    /* first element of the function table */

/* Limits the host enforces on the function table (snapcell/guest/functions.py). */
#define SC_MAX_FUNCTIONS 256
#define SC_MAX_PARAMS    16
#define SC_MAX_NAME      256          /* bytes of UTF-8, non-empty */

/* Abort messages are capped at this many bytes. */
#define SC_MAX_ABORT_MESSAGE 4096

/* Symbol names the host looks up in the guest ELF. */
#define SC_SYSCALL_ENTRY_SYMBOL "__sc_syscall_entry"

#ifndef __ASSEMBLER__
#include <stdint.h>

/* The ABI page as a C structure (all fields written by the host, except the syscall block,
 * which the guest writes and the host answers in `result`). */
struct sc_abi_page {
    uint64_t magic;         /* 0x00 */
    uint64_t version;       /* 0x08 */
    uint64_t input_addr;    /* 0x10 */
    uint64_t input_size;    /* 0x18 */
    uint64_t output_addr;   /* 0x20 */
    uint64_t output_size;   /* 0x28 */
    uint64_t heap_addr;     /* 0x30 */
    uint64_t heap_size;     /* 0x38 */
    uint64_t stack_top;     /* 0x40 */
    uint64_t generation;    /* 0x48: new value on every from_snapshot and restore */
    uint8_t seed[32];       /* 0x50..0x6F: fresh random bytes written with the generation */
    uint64_t reserved[2];   /* 0x70..0x7F */
    uint64_t syscall_nr;    /* 0x80 */
    uint64_t syscall_args[6]; /* 0x88..0xB7 */
    uint64_t syscall_result;  /* 0xB8 */
};

#ifndef __cplusplus
_Static_assert(__builtin_offsetof(struct sc_abi_page, input_addr) == SC_ABI_OFF_INPUT_ADDR, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, output_size) == SC_ABI_OFF_OUTPUT_SIZE, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, heap_size) == SC_ABI_OFF_HEAP_SIZE, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, stack_top) == SC_ABI_OFF_STACK_TOP, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, generation) == SC_ABI_OFF_GENERATION, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, seed) == SC_ABI_OFF_SEED, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, syscall_nr) == SC_ABI_OFF_SYSCALL_NR, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, syscall_args) == SC_ABI_OFF_SYSCALL_ARGS, "abi");
_Static_assert(__builtin_offsetof(struct sc_abi_page, syscall_result) == SC_ABI_OFF_SYSCALL_RESULT, "abi");
#endif

#define SC_ABI_PAGE ((volatile struct sc_abi_page *)(uintptr_t)SC_ABI_PAGE_ADDR)
#endif /* !__ASSEMBLER__ */

#endif /* SNAPCELL_ABI_H */
