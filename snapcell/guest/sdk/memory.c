/*
 * snapcell guest SDK runtime: guest memory (docs/guest-abi.md, "Memory map" and "System calls").
 *
 * brk/mmap/munmap/mremap/madvise are served in the guest from the heap arena of the ABI page;
 * __sc_syscall (syscalls.c) calls the sc__sys_* functions here. Like all of the system call
 * handler, this code may run before musl has set up TLS: no TLS, no errno, no stack protector,
 * no malloc.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "sc_internal.h"

#define PAGE ((uint64_t)SC_PAGE_SIZE)
#define ARENA_MAX_PAGES ((size_t)(SC_MAX_MEMORY / SC_PAGE_SIZE))
#define ARENA_WORDS (ARENA_MAX_PAGES / 64)

/*
 * The heap arena [heap address, heap address + heap size) of the ABI page, as a bitmap of
 * 4 KiB pages (bit set = page handed out). Allocation is first fit from the lowest free page.
 *
 * Zeroing policy: pages are zeroed WHEN THEY ARE HANDED OUT (mmap, mremap growth), except
 * pages never handed out before (still zero from the guest's image: arena_fresh); munmap does
 * not touch the pages. madvise(MADV_DONTNEED) zeroes the (allocated) pages of its range.
 * PROT_* flags are ignored: every arena page is readable and writable (never executable).
 * A dynamic guest's file-backed and MAP_FIXED mappings go to its library region (libmap.c).
 */
static uint64_t arena_map[ARENA_WORDS];
static uintptr_t arena_base;
static size_t arena_npages;
static size_t arena_hint;     /* every page below this index is in use */
/* Every page at or above this index was never handed out, so it still holds the zeros of the
 * guest's initial image and needs no zeroing (a large reservation that is hardly used, like
 * OpenBLAS's 128 MiB buffer, then costs nothing). The native test's arena is not zeroed. */
static size_t arena_fresh;
static int arena_state;       /* 0: not set up yet, 1: ready, -1: unusable (bad ABI page) */

static SC_NOSSP void arena_setup(uintptr_t addr, uint64_t size)
{
    uintptr_t start = (addr + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    if (size > UINTPTR_MAX - addr || start < addr) {
        arena_state = -1;
        return;
    }
    uintptr_t end = (addr + size) & ~(uintptr_t)(PAGE - 1);
    size_t pages = end > start ? (size_t)((end - start) / PAGE) : 0;
    if (pages > ARENA_MAX_PAGES)
        pages = ARENA_MAX_PAGES;
    arena_base = start;
    arena_npages = pages;
    arena_hint = 0;
#ifdef SC_ARENA_NATIVE_TEST
    arena_fresh = pages;
#else
    arena_fresh = 0;
#endif
    memset(arena_map, 0, sizeof arena_map);
    arena_state = 1;
}

#ifdef SC_ARENA_NATIVE_TEST
void sc_arena_test_setup(void *addr, uint64_t size) { arena_setup((uintptr_t)addr, size); }
#endif

static SC_NOSSP int arena_ready(void)
{
#ifndef SC_ARENA_NATIVE_TEST
    if (arena_state == 0) {
        volatile struct sc_abi_page *abi = SC_ABI_PAGE;
        uint64_t addr = abi->heap_addr, size = abi->heap_size;
        if (abi->magic != SC_ABI_MAGIC || addr < SC_GUEST_BASE || addr >= SC_MAX_MEMORY ||
            size > SC_MAX_MEMORY - addr)
            arena_state = -1;
        else
            arena_setup((uintptr_t)addr, size);
    }
#endif
    return arena_state == 1;
}

/* Mark n pages from index i as used (1) or free (0). */
static SC_NOSSP void bits_set(size_t i, size_t n, int used)
{
    while (n) {
        size_t w = i >> 6, b = i & 63;
        size_t k = 64 - b;
        if (k > n)
            k = n;
        uint64_t mask = (k == 64 ? ~(uint64_t)0 : (((uint64_t)1 << k) - 1)) << b;
        if (used)
            arena_map[w] |= mask;
        else
            arena_map[w] &= ~mask;
        i += k;
        n -= k;
    }
}

/* Number of consecutive pages from index i that are in state `used`, at most max.
 * The caller guarantees i + max <= arena_npages. */
static SC_NOSSP size_t run_len(size_t i, size_t max, int used)
{
    size_t n = 0;
    while (n < max) {
        size_t w = (i + n) >> 6, b = (i + n) & 63;
        uint64_t word = arena_map[w];
        if (!used)
            word = ~word;
        word >>= b;                      /* bit 0 = page i + n; the top b bits become 0 */
        uint64_t inv = ~word;
        size_t avail = 64 - b;
        size_t ones = inv ? (size_t)__builtin_ctzll(inv) : 64;
        if (ones > avail)
            ones = avail;
        n += ones;
        if (ones < avail)
            break;
    }
    return n < max ? n : max;
}

/* Mark [i, i + n) used and keep the hint on the lowest free page. */
static SC_NOSSP void arena_claim(size_t i, size_t n)
{
    bits_set(i, n, 1);
    if (arena_hint >= i && arena_hint < i + n) {
        arena_hint = i + n;
        arena_hint += run_len(arena_hint, arena_npages - arena_hint, 1);
    }
}

static SC_NOSSP void arena_release(size_t i, size_t n)
{
    bits_set(i, n, 0);
    if (i < arena_hint)
        arena_hint = i;
}

/* First fit: index of n free consecutive pages, claimed; or -1. Not zeroed. */
static SC_NOSSP long arena_alloc(size_t n)
{
    size_t i = arena_hint;
    if (n == 0 || n > arena_npages)
        return -1;
    while (i + n <= arena_npages) {
        i += run_len(i, arena_npages - i, 1);       /* skip used pages */
        if (i + n > arena_npages)
            break;
        size_t fr = run_len(i, n, 0);
        if (fr >= n) {
            arena_claim(i, n);
            return (long)i;
        }
        i += fr;
    }
    return -1;
}

static SC_NOSSP void *page_ptr(size_t i) { return (void *)(arena_base + i * PAGE); }

/* Zero pages [i, i + n) being handed out: only those handed out before (see arena_fresh). */
static SC_NOSSP void zero_pages(size_t i, size_t n)
{
    if (i < arena_fresh)
        memset(page_ptr(i), 0, (i + n < arena_fresh ? n : arena_fresh - i) * PAGE);
    if (i + n > arena_fresh)
        arena_fresh = i + n;
}

/* Pages of [addr, addr + len) (len rounded up to pages) if that range lies inside the arena.
 * addr must be page aligned and len > 0. */
static SC_NOSSP int arena_range(uint64_t addr, uint64_t len, size_t *first, size_t *count)
{
    uint64_t bytes = (uint64_t)arena_npages * PAGE;
    if (addr < arena_base)
        return 0;
    uint64_t off = addr - arena_base;
    if (off >= bytes || len > bytes - off)
        return 0;
    *first = (size_t)(off / PAGE);
    *count = (size_t)((len + PAGE - 1) / PAGE);
    return 1;
}

SC_NOSSP long sc__sys_mmap(uint64_t addr, uint64_t len, uint64_t prot, uint64_t flags,
                              uint64_t fd, uint64_t off)
{
    (void)addr; /* a hint only: ignored */
    (void)prot; /* all arena pages are RW, NX */
    (void)fd;   /* ignored for MAP_ANONYMOUS, as on Linux */
#ifndef SC_ARENA_NATIVE_TEST
    /* a dynamic guest's shared objects: the library region (libmap.c) */
    if (sc__lib_present() && ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) || !(flags & MAP_ANONYMOUS)))
        return sc__lib_mmap(addr, len, prot, flags, fd, off);
#endif
    if (len == 0 || (off & (PAGE - 1)))
        return -EINVAL;
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
        return -EINVAL;
    if ((flags & MAP_TYPE) != MAP_PRIVATE)
        return -EINVAL;
    if (!(flags & MAP_ANONYMOUS))
        return -ENODEV;
    if (!arena_ready() || len > (uint64_t)arena_npages * PAGE)
        return -ENOMEM;
    size_t n = (size_t)((len + PAGE - 1) / PAGE);
    long idx = arena_alloc(n);
    if (idx < 0)
        return -ENOMEM;
    zero_pages((size_t)idx, n);
    return (long)(uintptr_t)page_ptr((size_t)idx);
}

SC_NOSSP long sc__sys_munmap(uint64_t addr, uint64_t len)
{
    size_t i, n;
    if ((addr & (PAGE - 1)) || len == 0)
        return -EINVAL;
#ifndef SC_ARENA_NATIVE_TEST
    if (sc__lib_owns(addr))
        return sc__lib_munmap(addr, len);
#endif
    if (!arena_ready() || !arena_range(addr, len, &i, &n))
        return -EINVAL; /* only arena memory can be unmapped */
    arena_release(i, n); /* pages not handed out are ignored, as Linux does */
    return 0;
}

SC_NOSSP long sc__sys_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, uint64_t flags)
{
    size_t i, n;
    if ((old & (PAGE - 1)) || (flags & ~(uint64_t)MREMAP_MAYMOVE))
        return -EINVAL; /* MREMAP_FIXED and MREMAP_DONTUNMAP are not supported */
    if (old_len == 0 || new_len == 0)
        return -EINVAL;
    if (!arena_ready() || !arena_range(old, old_len, &i, &n) || run_len(i, n, 1) < n)
        return -EFAULT; /* the old range must be entirely mapped arena pages */
    if (new_len > (uint64_t)arena_npages * PAGE)
        return -ENOMEM;
    size_t m = (size_t)((new_len + PAGE - 1) / PAGE);
    if (m <= n) {                                   /* shrink (or same size) in place */
        if (m < n)
            arena_release(i + m, n - m);
        return (long)old;
    }
    if (i + m <= arena_npages && run_len(i + n, m - n, 0) == m - n) {   /* grow in place */
        arena_claim(i + n, m - n);
        zero_pages(i + n, m - n);
        return (long)old;
    }
    if (!(flags & MREMAP_MAYMOVE))
        return -ENOMEM;
    long idx = arena_alloc(m);                      /* the old pages are still claimed */
    if (idx < 0)
        return -ENOMEM;
    zero_pages((size_t)idx + n, m - n);
    memcpy(page_ptr((size_t)idx), page_ptr(i), n * PAGE);
    arena_release(i, n);
    return (long)(uintptr_t)page_ptr((size_t)idx);
}

SC_NOSSP long sc__sys_madvise(uint64_t addr, uint64_t len, uint64_t advice)
{
    size_t i, n;
    if (addr & (PAGE - 1))
        return -EINVAL;
    if (advice != MADV_DONTNEED || len == 0)
        return 0; /* every other advice is accepted and has no effect */
    if (!arena_ready() || !arena_range(addr, len, &i, &n))
        return -EINVAL; /* only arena pages can be discarded */
    int unmapped = 0;
    size_t end = i + n;
    while (i < end) {
        size_t used = run_len(i, end - i, 1);
        if (used)
            memset(page_ptr(i), 0, used * PAGE);
        i += used;
        size_t fr = run_len(i, end - i, 0);
        if (fr)
            unmapped = 1;
        i += fr;
    }
    return unmapped ? -ENOMEM : 0; /* like Linux: range partly unmapped */
}

/* brk always "fails": it returns the same fixed break whatever is asked, so musl's mallocng
 * (which checks brk(new) == new) falls back to mmap. The value is the page-rounded end of the
 * ELF image (where Linux's initial break would be). */
extern char _end[];
SC_NOSSP long sc__sys_brk(void)
{
    return (long)(((uintptr_t)_end + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
}
