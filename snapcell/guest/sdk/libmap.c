/*
 * snapcell guest SDK runtime: the library region of a dynamic guest (docs/guest-abi.md,
 * "Dynamic guests").
 *
 * A dynamic guest (the dynamic Python guest) defines the symbols sc_lib_region and
 * sc_lib_region_end: a span of its own ELF, writable and executable until the W^X seal, where
 * musl's dynamic linker maps shared objects. Here:
 *   - a file-backed MAP_PRIVATE mmap of a read-only image file (fs.c) takes fresh pages of the
 *     region (a bump allocator: musl never unmaps a loaded library) and gets a private copy of
 *     the file's bytes, zero past its end;
 *   - MAP_FIXED, file-backed or anonymous, may only map over region pages handed out before
 *     (musl maps a library's whole span, then each segment over it);
 *   - munmap of region pages zeroes them (and gives them back when they are the last ones).
 * Nothing here reaches the host: files under /tmp cannot be mapped, and after sc__lib_seal()
 * nothing new can be mapped executable (the page tables of the sealed snapshot enforce it; the
 * refusal here gives a clear error instead of a fault). A static guest has no region: its
 * file-backed mmap fails with ENODEV as before.
 *
 * Like the rest of the system call handler this runs before musl has relocated anything: no
 * TLS, no errno, no PLT calls (memcpy/memset are linked into a dynamic guest directly).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "sc_internal.h"
#include "snapcell_fs.h"

#define PAGE ((uint64_t)SC_PAGE_SIZE)

extern char sc_lib_region[] __attribute__((weak));
extern char sc_lib_region_end[] __attribute__((weak));

static uintptr_t lib_next;   /* first region page never handed out (0: not set up yet) */
static int lib_sealed;

/* Bit i set: region page i is mapped executable now (the protection of its last mmap or
 * mprotect). The host reads it to seal the snapshot (snapcell/sandbox/wx_seal.py): those pages
 * become read + execute, every other region page read + write. */
#define LIB_MAP_WORDS ((size_t)(SC_MAX_MEMORY / SC_PAGE_SIZE / 64))
uint64_t sc_lib_exec_map[LIB_MAP_WORDS];

static SC_NOSSP void exec_mark(uintptr_t lo, uintptr_t addr, uint64_t n, int exec)
{
    for (uint64_t i = (addr - lo) / PAGE, end = i + n / PAGE; i < end && i / 64 < LIB_MAP_WORDS; i++) {
        if (exec)
            sc_lib_exec_map[i / 64] |= (uint64_t)1 << (i % 64);
        else
            sc_lib_exec_map[i / 64] &= ~((uint64_t)1 << (i % 64));
    }
}

static SC_NOSSP int lib_ready(uintptr_t *lo, uintptr_t *hi)
{
    uintptr_t a = (uintptr_t)sc_lib_region, b = (uintptr_t)sc_lib_region_end;
    if (!a || b <= a || (a & (PAGE - 1)) || (b & (PAGE - 1)))
        return 0;
    if (!lib_next)
        lib_next = a;
    *lo = a;
    *hi = b;
    return 1;
}

SC_NOSSP int sc__lib_present(void)
{
    uintptr_t lo, hi;
    return lib_ready(&lo, &hi);
}

SC_NOSSP int sc__lib_owns(uint64_t addr)
{
    uintptr_t lo, hi;
    return lib_ready(&lo, &hi) && addr >= lo && addr < hi;
}

SC_NOSSP long sc__lib_mmap(uint64_t addr, uint64_t len, uint64_t prot, uint64_t flags,
                           uint64_t fd, uint64_t off)
{
    uintptr_t lo, hi;
    const void *data = 0;
    uint64_t size = 0;
    if (!lib_ready(&lo, &hi))
        return (flags & MAP_FIXED) ? -EINVAL : -ENODEV;
    if (len == 0 || (off & (PAGE - 1)) || (flags & MAP_TYPE) != MAP_PRIVATE ||
        (flags & MAP_FIXED_NOREPLACE))
        return -EINVAL;
    if (lib_sealed && (prot & PROT_EXEC))
        return -EPERM;        /* W^X seal: no new code after warm-up */
    if (len > hi - lo)
        return -ENOMEM;
    uint64_t n = (len + PAGE - 1) & ~(PAGE - 1);
    if (!(flags & MAP_ANONYMOUS)) {
        long r = sc_fs_image_file((long)fd, &data, &size);
        if (r)
            return r;
    }
    uintptr_t dst;
    if (flags & MAP_FIXED) {
        if ((addr & (PAGE - 1)) || addr < lo || addr > lib_next || n > lib_next - addr)
            return -EINVAL;   /* only over region pages handed out before */
        dst = (uintptr_t)addr;
    } else {
        if (flags & MAP_ANONYMOUS)
            return -EINVAL;   /* anonymous memory comes from the heap arena (memory.c) */
        if (n > hi - lib_next)
            return -ENOMEM;
        dst = lib_next;
        lib_next += n;
    }
    uint64_t copy = off < size ? size - off : 0;
    if (copy > n)
        copy = n;
    if (copy)
        memcpy((void *)dst, (const char *)data + off, (size_t)copy);
    memset((char *)dst + copy, 0, (size_t)(n - copy));
    exec_mark(lo, dst, n, (prot & PROT_EXEC) != 0);
    return (long)dst;
}

SC_NOSSP long sc__lib_munmap(uint64_t addr, uint64_t len)
{
    uintptr_t lo, hi;
    if (!lib_ready(&lo, &hi) || (addr & (PAGE - 1)) || len == 0 || addr < lo || addr >= hi ||
        len > hi - addr)
        return -EINVAL;
    uint64_t n = (len + PAGE - 1) & ~(PAGE - 1);
    if (addr >= lib_next)
        return 0;                                   /* never handed out */
    if (n > lib_next - addr)
        n = lib_next - addr;
    if (lib_sealed)
        return -EPERM;        /* sealed code pages are read-only: leave them */
    memset((void *)(uintptr_t)addr, 0, (size_t)n);
    exec_mark(lo, (uintptr_t)addr, n, 0);
    if (addr + n == lib_next)
        lib_next = addr;
    return 0;
}

SC_NOSSP long sc__lib_mprotect(uint64_t addr, uint64_t len, uint64_t prot)
{
    uintptr_t lo, hi;
    if (addr & (PAGE - 1))
        return -EINVAL;
    if (lib_sealed && (prot & PROT_EXEC))
        return -EACCES;       /* W^X seal: nothing becomes executable after warm-up */
    if (!lib_sealed && len && lib_ready(&lo, &hi) && addr >= lo && addr < lib_next) {
        uint64_t n = (len + PAGE - 1) & ~(PAGE - 1);
        if (n > lib_next - addr)
            n = lib_next - addr;
        exec_mark(lo, (uintptr_t)addr, n, (prot & PROT_EXEC) != 0);
    }
    return 0;                 /* page permissions are the host's (docs/guest-abi.md) */
}

/* After warm-up: refuse every new executable mapping from now on (sc__lib_mmap). */
void sc_lib_seal(void) { lib_sealed = 1; }
int sc_lib_is_sealed(void) { return lib_sealed; }
