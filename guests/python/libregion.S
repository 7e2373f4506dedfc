/*
 * The library region of the dynamic Python guest (snapcell/guest/sdk/libmap.c): address space
 * in the guest's own ELF where musl's dynamic linker maps extension modules and the shared
 * objects PyPI's wheels bundle. Writable and executable until the W^X seal after warm-up
 * (docs/security.md); no file bytes (NOBITS): it costs memory only where libraries land.
 */
    .section .sc_libs, "awx", @nobits
    .balign 2097152
    .globl sc_lib_region, sc_lib_region_end
sc_lib_region:
    .skip 256 << 20
sc_lib_region_end:
    .section .note.GNU-stack, "", @progbits
