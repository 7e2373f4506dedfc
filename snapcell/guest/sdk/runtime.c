/*
 * snapcell guest SDK runtime (docs/guest-abi.md, ABI version 1).
 *
 * Two parts:
 *  1. The system call handler __sc_syscall, entered from entry.S (__sc_syscall_entry, the
 *     target of MSR_LSTAR). Memory management (brk/mmap/munmap/mremap/madvise) is served in
 *     the guest from the heap arena of the ABI page; a few process calls are answered locally;
 *     everything else is forwarded to the host through the ABI page syscall block and
 *     `out OUT_SYSCALL`.
 *  2. main(): checks the ABI page, calls the guest author's snapcell_main(), publishes the
 *     function table (`out OUT_RETURN`) and then serves calls forever.
 *
 * Compiling with -DSC_ARENA_NATIVE_TEST builds only part 1, without port I/O, so the arena can
 * be unit-tested natively (the test sets the arena up with sc_arena_test_setup()).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include "snapcell_abi.h"

#ifndef SC_ARENA_NATIVE_TEST
#include "snapcell.h"
#include "snapcell_fs.h"
#define MP_SOURCE 1
#include "msgpuck.h"
#endif

#if defined(__has_attribute)
#if __has_attribute(no_stack_protector)
#define SC_NOSSP __attribute__((no_stack_protector))
#endif
#endif
#ifndef SC_NOSSP
#define SC_NOSSP
#endif

/* ============================================================================================
 * Part 1: system calls
 * ==========================================================================================*/

#define PAGE ((uint64_t)SC_PAGE_SIZE)
#define ARENA_MAX_PAGES ((size_t)(SC_MAX_MEMORY / SC_PAGE_SIZE))
#define ARENA_WORDS (ARENA_MAX_PAGES / 64)

/*
 * The heap arena [heap address, heap address + heap size) of the ABI page, as a bitmap of
 * 4 KiB pages (bit set = page handed out). Allocation is first fit from the lowest free page.
 *
 * Zeroing policy: pages are zeroed WHEN THEY ARE HANDED OUT (mmap, mremap growth), so the
 * runtime does not depend on the initial contents of the arena; munmap does not touch the
 * pages. madvise(MADV_DONTNEED) zeroes the (allocated) pages of its range immediately.
 * PROT_* flags are ignored: every arena page is readable and writable (never executable).
 */
static uint64_t arena_map[ARENA_WORDS];
static uintptr_t arena_base;
static size_t arena_npages;
static size_t arena_hint;     /* every page below this index is in use */
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
    memset(arena_map, 0, sizeof arena_map);
    arena_state = 1;
}

#ifdef SC_ARENA_NATIVE_TEST
void sc_arena_test_setup(void *addr, uint64_t size);
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

static SC_NOSSP long sys_mmap(uint64_t addr, uint64_t len, uint64_t prot, uint64_t flags,
                              uint64_t fd, uint64_t off)
{
    (void)addr; /* a hint only: ignored */
    (void)prot; /* all arena pages are RW, NX */
    (void)fd;   /* ignored for MAP_ANONYMOUS, as on Linux */
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
    memset(page_ptr((size_t)idx), 0, n * PAGE);
    return (long)(uintptr_t)page_ptr((size_t)idx);
}

static SC_NOSSP long sys_munmap(uint64_t addr, uint64_t len)
{
    size_t i, n;
    if ((addr & (PAGE - 1)) || len == 0)
        return -EINVAL;
    if (!arena_ready() || !arena_range(addr, len, &i, &n))
        return -EINVAL; /* only arena memory can be unmapped */
    arena_release(i, n); /* pages not handed out are ignored, as Linux does */
    return 0;
}

static SC_NOSSP long sys_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, uint64_t flags)
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
        memset(page_ptr(i + n), 0, (m - n) * PAGE);
        return (long)old;
    }
    if (!(flags & MREMAP_MAYMOVE))
        return -ENOMEM;
    long idx = arena_alloc(m);                      /* the old pages are still claimed */
    if (idx < 0)
        return -ENOMEM;
    memcpy(page_ptr((size_t)idx), page_ptr(i), n * PAGE);
    memset(page_ptr((size_t)idx + n), 0, (m - n) * PAGE);
    arena_release(i, n);
    return (long)(uintptr_t)page_ptr((size_t)idx);
}

static SC_NOSSP long sys_madvise(uint64_t addr, uint64_t len, uint64_t advice)
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
static SC_NOSSP long sys_brk(void)
{
    return (long)(((uintptr_t)_end + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
}

#define SC_KERNEL_SIGSET 8 /* sizeof the kernel's sigset_t on x86-64 (_NSIG / 8) */

static SC_NOSSP long sys_rt_sigprocmask(uint64_t oldset, uint64_t setsize)
{
    if (setsize != SC_KERNEL_SIGSET)
        return -EINVAL;
    if (oldset)
        memset((void *)(uintptr_t)oldset, 0, SC_KERNEL_SIGSET); /* nothing is ever blocked */
    return 0;
}

static SC_NOSSP long sys_rt_sigaction(uint64_t sig, uint64_t act, uint64_t oldact, uint64_t setsize)
{
    if (setsize != SC_KERNEL_SIGSET || sig < 1 || sig > 64)
        return -EINVAL;
    if (act && (sig == 9 || sig == 19)) /* SIGKILL, SIGSTOP */
        return -EINVAL;
    if (oldact) /* struct k_sigaction: handler, flags, restorer, mask = 24 + 8 bytes: SIG_DFL */
        memset((void *)(uintptr_t)oldact, 0, 24 + SC_KERNEL_SIGSET);
    return 0;
}

#ifndef SC_ARENA_NATIVE_TEST
static inline void sc_port_out(uint16_t port)
{
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(port) : "memory");
}

static SC_NOSSP long forward_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    volatile struct sc_abi_page *abi = SC_ABI_PAGE;
    abi->syscall_nr = (uint64_t)nr;
    abi->syscall_args[0] = (uint64_t)a0;
    abi->syscall_args[1] = (uint64_t)a1;
    abi->syscall_args[2] = (uint64_t)a2;
    abi->syscall_args[3] = (uint64_t)a3;
    abi->syscall_args[4] = (uint64_t)a4;
    abi->syscall_args[5] = (uint64_t)a5;
    sc_port_out(SC_OUT_SYSCALL);
    return (long)abi->syscall_result;
}
#else
static long forward_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    (void)nr; (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return -ENOSYS;
}
#endif

/*
 * nanosleep / clock_nanosleep: the guest has no timer to wait on, so a sleep polls the host's
 * clock (one exit per poll) until the deadline. The vCPU stays interruptible throughout (every
 * poll returns to the host), so a run's time limit still cuts a long sleep.
 */
#define SC_NSEC 1000000000LL
static SC_NOSSP long sys_sleep(long clock, long flags, const struct timespec *req,
                               struct timespec *rem)
{
    struct timespec now;
    if (!req || req->tv_nsec < 0 || req->tv_nsec >= SC_NSEC || req->tv_sec < 0)
        return -EINVAL;
    if (clock != CLOCK_REALTIME && clock != CLOCK_MONOTONIC && clock != CLOCK_BOOTTIME)
        return -EINVAL;
    long r = forward_syscall(SYS_clock_gettime, clock, (long)&now, 0, 0, 0, 0);
    if (r)
        return r;
    long long deadline = (long long)req->tv_sec * SC_NSEC + req->tv_nsec;
    if (!(flags & 1)) /* TIMER_ABSTIME */
        deadline += (long long)now.tv_sec * SC_NSEC + now.tv_nsec;
    while ((long long)now.tv_sec * SC_NSEC + now.tv_nsec < deadline) {
        r = forward_syscall(SYS_clock_gettime, clock, (long)&now, 0, 0, 0, 0);
        if (r)
            return r;
    }
    if (rem)
        rem->tv_sec = rem->tv_nsec = 0;
    return 0;
}

/*
 * The C system call handler, called by __sc_syscall_entry (entry.S) with the Linux syscall
 * number and its six arguments; returns the value for rax (-errno on failure).
 * It may run before musl has set up TLS (fs base = 0): no TLS, no errno, no stack protector,
 * no malloc.
 */
long __sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
__attribute__((used)) SC_NOSSP long
__sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    uint64_t u0 = (uint64_t)a0, u1 = (uint64_t)a1, u2 = (uint64_t)a2, u3 = (uint64_t)a3;
    switch (nr) {
    case SYS_brk:
        return sys_brk();
    case SYS_mmap:
        return sys_mmap(u0, u1, u2, u3, (uint64_t)a4, (uint64_t)a5);
    case SYS_munmap:
        return sys_munmap(u0, u1);
    case SYS_mremap:
        return sys_mremap(u0, u1, u2, u3);
    case SYS_madvise:
        return sys_madvise(u0, u1, u2);
    case SYS_mprotect:
        return 0;
    case SYS_set_tid_address:
        return 1;
    case SYS_rt_sigprocmask:
        return sys_rt_sigprocmask(u2, u3);
    case SYS_rt_sigaction:
        return sys_rt_sigaction(u0, u1, u2, u3);
    case SYS_getpid:
    case SYS_gettid:
        return 1;
    case SYS_ioctl:
        return -ENOTTY;
#ifndef SC_ARENA_NATIVE_TEST
    case SYS_nanosleep:
        return sys_sleep(CLOCK_MONOTONIC, 0, (const struct timespec *)a0, (struct timespec *)a1);
    case SYS_clock_nanosleep:
        return sys_sleep(a0, a1, (const struct timespec *)a2, (struct timespec *)a3);
    case SYS_sched_yield:
        return 0;
#endif
    default:
#ifndef SC_ARENA_NATIVE_TEST
        {
            long r; /* the in-guest file system (fs.c), when the guest mounted one */
            if (sc_fs_syscall(nr, a0, a1, a2, a3, a4, a5, &r))
                return r;
        }
#endif
        return forward_syscall(nr, a0, a1, a2, a3, a4, a5);
    }
}

#ifndef SC_ARENA_NATIVE_TEST
/* ============================================================================================
 * Part 2: the runtime (function table, dispatch loop, host calls, errors and aborts)
 * ==========================================================================================*/

#define SC_MSG_MAX SC_MAX_ABORT_MESSAGE     /* 4096: cap of error/abort/host-error messages */
#define SC_MSG_BUF (SC_MSG_MAX + 8)         /* room to see the character cut at the cap */
#define SC_SDK_ABORT (-1)                   /* abort code for SDK/ABI errors */

struct sc_func {
    uint64_t prefix;                        /* the name's first 8 bytes, zero padded */
    char *name;
    uint32_t name_len;
    sc_guest_fn fn;
    sc_type ret;
    int nparams;
    sc_type params[SC_MAX_PARAMS];
};

union sc_copy {
    union sc_copy *next;
    max_align_t align;
};

/*
 * Every page a call touches costs a fault the first time after the guest memory is mapped
 * afresh (from_snapshot on a new VM, restoring another snapshot), several microseconds under
 * shadow paging. So the state every call reads is defined together here (GCC lays it out
 * together, next to the start of funcs[]); find_func() compares inline name
 * prefixes (no heap access for names of up to 8 bytes); and stdio is flushed only when
 * something is pending (fflush writes to the FILE even when nothing is).
 */
static struct sc_func funcs[SC_MAX_FUNCTIONS];
static int nfuncs;
static int init_done;

static char *in_buf, *out_buf;
static uint64_t in_size, out_size;
static int out_ok;                          /* the output buffer can be written (ABI page ok) */
static union sc_copy *copies;               /* per-call copies, see copy_alloc() */

static char err_msg[SC_MSG_BUF];            /* sc_error() and runtime-generated call errors */
static char host_err[SC_MSG_BUF];           /* sc_host_error() */
static char abort_msg[SC_MSG_BUF];          /* sc_abort() */

/* ---- per-call copies ---------------------------------------------------------------------- */

/* A runtime-owned, NUL-terminated copy of len bytes, freed by copies_free(); NULL if the
 * heap is exhausted. */
static char *copy_alloc(const char *src, uint32_t len)
{
    union sc_copy *c = malloc(sizeof(union sc_copy) + (size_t)len + 1);
    if (!c)
        return NULL;
    c->next = copies;
    copies = c;
    char *p = (char *)(c + 1);
    if (len)
        memcpy(p, src, len);
    p[len] = '\0';
    return p;
}

/* Write out what the guest left in stdout's and stderr's buffers. */
static void flush_stdio(void)
{
    if (__fpending(stdout))
        fflush(stdout);
    if (__fpending(stderr))
        fflush(stderr);
}

static void copies_free(void)
{
    while (copies) {
        union sc_copy *next = copies->next;
        free(copies);
        copies = next;
    }
}

/* ---- small helpers ------------------------------------------------------------------------ */

static const char *const type_names[] = {
    [SC_VOID] = "void", [SC_I32] = "i32", [SC_U32] = "u32", [SC_I64] = "i64", [SC_U64] = "u64",
    [SC_F32] = "f32", [SC_F64] = "f64", [SC_STR] = "str", [SC_BOOL] = "bool", [SC_BYTES] = "bytes",
};

static int type_valid(sc_type t) { return (unsigned)t <= (unsigned)SC_BYTES; }

const char *sc_type_name(sc_type t) { return type_valid(t) ? type_names[t] : "?"; }

static const char *mp_type_name(enum mp_type t)
{
    switch (t) {
    case MP_NIL: return "nil";
    case MP_UINT: return "uint";
    case MP_INT: return "int";
    case MP_STR: return "str";
    case MP_BIN: return "bin";
    case MP_ARRAY: return "array";
    case MP_MAP: return "map";
    case MP_BOOL: return "bool";
    case MP_FLOAT: return "float32";
    case MP_DOUBLE: return "float64";
    case MP_EXT: return "ext";
    }
    return "?";
}

/* Length of s[0..len) cut to at most max bytes at a UTF-8 character boundary. s[max] must be
 * readable when len > max. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && max - n < 4 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* printf into buf (SC_MSG_BUF bytes); returns the length, capped at SC_MSG_MAX at a UTF-8
 * boundary, and NUL-terminates there. */
static uint32_t format_msg(char *buf, const char *fmt, va_list ap)
{
    int r = vsnprintf(buf, SC_MSG_BUF, fmt ? fmt : "", ap);
    if (r < 0) {
        strcpy(buf, "(message format error)");
        r = (int)strlen(buf);
    }
    size_t len = (size_t)r < SC_MSG_BUF - 1 ? (size_t)r : SC_MSG_BUF - 1;
    len = utf8_cut(buf, len, SC_MSG_MAX);
    buf[len] = '\0';
    return (uint32_t)len;
}

/* MessagePack integer of either sign (msgpuck's mp_encode_int takes negatives only). */
static uint32_t sizeof_sint(int64_t v) { return v < 0 ? mp_sizeof_int(v) : mp_sizeof_uint((uint64_t)v); }
static char *encode_sint(char *w, int64_t v) { return v < 0 ? mp_encode_int(w, v) : mp_encode_uint(w, (uint64_t)v); }

static uint64_t sizeof_str(uint64_t len) { return mp_sizeof_strl((uint32_t)len) + len; }
static uint64_t sizeof_bin(uint64_t len) { return mp_sizeof_binl((uint32_t)len) + len; }

/* Can a message of n payload bytes be written to the output buffer? */
static int out_fits(uint64_t n) { return out_ok && out_size >= SC_FRAME_HEADER && n <= out_size - SC_FRAME_HEADER; }

static char *out_payload(void) { return out_buf + SC_FRAME_HEADER; }

static void out_commit(const char *end)
{
    uint32_t n = (uint32_t)(end - out_payload());
    memcpy(out_buf, &n, sizeof n); /* x86-64 is little-endian */
}

/* The first 8 bytes of a name of len bytes, zero padded (a quick, heap-free first compare). */
static uint64_t name_prefix(const char *name, uint32_t len)
{
    uint64_t p = 0;
    memcpy(&p, name, len < 8 ? len : 8);
    return p;
}

static uint32_t load_len(const char *buf)
{
    uint32_t n;
    memcpy(&n, buf, sizeof n);
    return n;
}

/* ---- values ------------------------------------------------------------------------------- */

sc_value sc_void(void) { sc_value v = {0}; v.type = SC_VOID; return v; }
sc_value sc_i32(int32_t x) { sc_value v = {0}; v.type = SC_I32; v.i32 = x; return v; }
sc_value sc_u32(uint32_t x) { sc_value v = {0}; v.type = SC_U32; v.u32 = x; return v; }
sc_value sc_i64(int64_t x) { sc_value v = {0}; v.type = SC_I64; v.i64 = x; return v; }
sc_value sc_u64(uint64_t x) { sc_value v = {0}; v.type = SC_U64; v.u64 = x; return v; }
sc_value sc_f32(float x) { sc_value v = {0}; v.type = SC_F32; v.f32 = x; return v; }
sc_value sc_f64(double x) { sc_value v = {0}; v.type = SC_F64; v.f64 = x; return v; }
sc_value sc_bool(bool x) { sc_value v = {0}; v.type = SC_BOOL; v.b = x; return v; }

sc_value sc_str_n(const char *p, uint32_t len)
{
    sc_value v = {0};
    v.type = SC_STR;
    v.str.ptr = p ? p : "";
    v.str.len = p ? len : 0;
    return v;
}

sc_value sc_str(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return sc_str_n(s, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
}

sc_value sc_bytes(const void *p, uint32_t len)
{
    sc_value v = {0};
    v.type = SC_BYTES;
    v.bytes.ptr = p ? (const uint8_t *)p : (const uint8_t *)"";
    v.bytes.len = p ? len : 0;
    return v;
}

sc_value sc_error(int32_t code, const char *fmt, ...)
{
    sc_value v = {0};
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = format_msg(err_msg, fmt, ap);
    va_end(ap);
    v.type = SC_STR;
    v.str.ptr = err_msg;
    v.str.len = n;
    v.is_error = 1;
    v.err_code = code;
    return v;
}

/* NULL when v is a well-formed value (valid type, no NULL pointer with a length); else why not. */
static const char *value_problem(const sc_value *v)
{
    if (!type_valid(v->type))
        return "invalid sc_type";
    if (v->type == SC_STR && !v->str.ptr && v->str.len)
        return "str with a NULL pointer";
    if (v->type == SC_BYTES && !v->bytes.ptr && v->bytes.len)
        return "bytes with a NULL pointer";
    return NULL;
}

static uint64_t value_size(const sc_value *v)
{
    switch (v->type) {
    case SC_VOID: return mp_sizeof_nil();
    case SC_I32: return sizeof_sint(v->i32);
    case SC_U32: return mp_sizeof_uint(v->u32);
    case SC_I64: return sizeof_sint(v->i64);
    case SC_U64: return mp_sizeof_uint(v->u64);
    case SC_F32: return mp_sizeof_float(v->f32);
    case SC_F64: return mp_sizeof_double(v->f64);
    case SC_STR: return sizeof_str(v->str.len);
    case SC_BOOL: return mp_sizeof_bool(v->b);
    case SC_BYTES: return sizeof_bin(v->bytes.len);
    }
    return 0;
}

static char *value_encode(char *w, const sc_value *v)
{
    switch (v->type) {
    case SC_VOID: return mp_encode_nil(w);
    case SC_I32: return encode_sint(w, v->i32);
    case SC_U32: return mp_encode_uint(w, v->u32);
    case SC_I64: return encode_sint(w, v->i64);
    case SC_U64: return mp_encode_uint(w, v->u64);
    case SC_F32: return mp_encode_float(w, v->f32);
    case SC_F64: return mp_encode_double(w, v->f64);
    case SC_STR:
        w = mp_encode_strl(w, v->str.len);
        if (v->str.len)
            memcpy(w, v->str.ptr, v->str.len);
        return w + v->str.len;
    case SC_BOOL: return mp_encode_bool(w, v->b);
    case SC_BYTES:
        w = mp_encode_binl(w, v->bytes.len);
        if (v->bytes.len)
            memcpy(w, v->bytes.ptr, v->bytes.len);
        return w + v->bytes.len;
    }
    return w;
}

/* ---- bounded MessagePack reading ---------------------------------------------------------- *
 * Everything read here comes from the host and is bounds-checked against the message end.
 * mp_check is only ever applied to one scalar/str/bin element at a time (it miscounts
 * arrays claiming more than INT_MAX elements); array headers are checked with mp_check_array
 * and element counts are compared with small expected counts before use. */

typedef struct {
    const char *p;
    const char *end;
} sc_rd;

static int rd_array(sc_rd *r, uint32_t *count)
{
    if (r->p >= r->end || mp_typeof(*r->p) != MP_ARRAY || mp_check_array(r->p, r->end) > 0)
        return -1;
    *count = mp_decode_array(&r->p);
    return 0;
}

/* The next element exists, is of type t (not a container) and lies entirely inside. */
static int rd_scalar(const sc_rd *r, enum mp_type t)
{
    const char *q = r->p;
    return r->p < r->end && mp_typeof(*r->p) == t && mp_check(&q, r->end) == 0 ? 0 : -1;
}

/* Decode the next element as a value of type `want` into *out (str/bytes as runtime-owned
 * copies). 0: ok; -1: wrong type, out of range or malformed (why[] says which); -2: out of
 * memory. */
static int decode_value(sc_rd *r, sc_type want, sc_value *out, char *why, size_t whysz)
{
    if (r->p >= r->end) {
        snprintf(why, whysz, "missing value");
        return -1;
    }
    enum mp_type t = mp_typeof(*r->p);
    int ok;
    switch (want) {
    case SC_VOID: ok = t == MP_NIL; break;
    case SC_I32: case SC_U32: case SC_I64: case SC_U64: ok = t == MP_UINT || t == MP_INT; break;
    case SC_F32: case SC_F64: ok = t == MP_FLOAT || t == MP_DOUBLE; break;
    case SC_STR: ok = t == MP_STR; break;
    case SC_BOOL: ok = t == MP_BOOL; break;
    case SC_BYTES: ok = t == MP_BIN; break;
    default: ok = 0; break;
    }
    if (!ok) {
        snprintf(why, whysz, "expected %s, got %s", sc_type_name(want), mp_type_name(t));
        return -1;
    }
    if (rd_scalar(r, t)) {
        snprintf(why, whysz, "truncated or malformed %s", mp_type_name(t));
        return -1;
    }
    *out = sc_void();
    out->type = want;
    if (t == MP_UINT || t == MP_INT) {
        /* MP_INT covers int8..int64 (either sign); MP_UINT covers the unsigned formats */
        int neg = 0;
        uint64_t u = 0;
        int64_t s = 0;
        if (t == MP_UINT) {
            u = mp_decode_uint(&r->p);
        } else {
            s = mp_decode_int(&r->p);
            if (s < 0)
                neg = 1;
            else
                u = (uint64_t)s;
        }
        int fits;
        switch (want) {
        case SC_I32: fits = neg ? s >= INT32_MIN : u <= INT32_MAX; out->i32 = neg ? (int32_t)s : (int32_t)u; break;
        case SC_U32: fits = !neg && u <= UINT32_MAX; out->u32 = (uint32_t)u; break;
        case SC_I64: fits = neg || u <= INT64_MAX; out->i64 = neg ? s : (int64_t)u; break;
        default: fits = !neg; out->u64 = u; break;
        }
        if (!fits) {
            if (neg)
                snprintf(why, whysz, "%lld is out of range for %s", (long long)s, sc_type_name(want));
            else
                snprintf(why, whysz, "%llu is out of range for %s", (unsigned long long)u, sc_type_name(want));
            return -1;
        }
        return 0;
    }
    switch (t) {
    case MP_NIL:
        mp_decode_nil(&r->p);
        return 0;
    case MP_FLOAT: {
        float f = mp_decode_float(&r->p);
        if (want == SC_F32) out->f32 = f; else out->f64 = f;
        return 0;
    }
    case MP_DOUBLE: {
        double d = mp_decode_double(&r->p);
        if (want == SC_F32) out->f32 = (float)d; else out->f64 = d;
        return 0;
    }
    case MP_BOOL:
        out->b = mp_decode_bool(&r->p);
        return 0;
    case MP_STR:
    case MP_BIN: {
        uint32_t len;
        const char *p = t == MP_STR ? mp_decode_str(&r->p, &len) : mp_decode_bin(&r->p, &len);
        char *c = copy_alloc(p, len);
        if (!c)
            return -2;
        if (t == MP_STR) {
            out->str.ptr = c;
            out->str.len = len;
        } else {
            out->bytes.ptr = (const uint8_t *)c;
            out->bytes.len = len;
        }
        return 0;
    }
    default:
        snprintf(why, whysz, "unexpected %s", mp_type_name(t));
        return -1;
    }
}

/* ---- aborts ------------------------------------------------------------------------------- */

static void write_abort(int32_t code, const char *msg, uint32_t len)
{
    uint64_t head = 1 + sizeof_sint(code);
    if (!out_fits(head + mp_sizeof_strl(0)))
        return;
    uint64_t room = out_size - SC_FRAME_HEADER - head;
    while (len && sizeof_str(len) > room)  /* shrink to fit a tiny output buffer */
        len = (uint32_t)utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    char *w = out_payload();
    w = mp_encode_array(w, 2);
    w = encode_sint(w, code);
    w = mp_encode_str(w, msg, len);
    out_commit(w);
}

void sc_abort(int32_t code, const char *fmt, ...)
{
    static int aborting;
    va_list ap;
    va_start(ap, fmt);
    uint32_t len = format_msg(abort_msg, fmt, ap);
    va_end(ap);
    if (!aborting) {
        aborting = 1;
        fflush(stdout);
        fflush(stderr);
    }
    write_abort(code, abort_msg, len);
    for (;;)
        sc_port_out(SC_OUT_ABORT);
}

/* ---- registration and the function table -------------------------------------------------- */

void sc_register(const char *name, sc_guest_fn fn, sc_type ret, int nargs, ...)
{
    if (init_done)
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\") called after initialisation", name ? name : "(null)");
    if (!name || !*name)
        sc_abort(SC_SDK_ABORT, "sc_register: empty function name");
    size_t nlen = strlen(name);
    if (nlen > SC_MAX_NAME)
        sc_abort(SC_SDK_ABORT, "sc_register: function name longer than %d bytes", SC_MAX_NAME);
    if (!fn)
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): NULL function", name);
    if (!type_valid(ret))
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): invalid return type %d", name, (int)ret);
    if (nargs < 0 || nargs > SC_MAX_PARAMS)
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): %d parameters (0..%d allowed)", name, nargs, SC_MAX_PARAMS);
    if (nfuncs >= SC_MAX_FUNCTIONS)
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): more than %d functions", name, SC_MAX_FUNCTIONS);
    for (int i = 0; i < nfuncs; i++)
        if (funcs[i].name_len == nlen && memcmp(funcs[i].name, name, nlen) == 0)
            sc_abort(SC_SDK_ABORT, "sc_register: function \"%s\" registered twice", name);
    struct sc_func *f = &funcs[nfuncs];
    va_list ap;
    va_start(ap, nargs);
    for (int i = 0; i < nargs; i++) {
        int t = va_arg(ap, int); /* enums are promoted to int through varargs */
        if (!type_valid((sc_type)t) || t == SC_VOID) {
            va_end(ap);
            sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): invalid type %d for parameter %d", name, t, i);
        }
        f->params[i] = (sc_type)t;
    }
    va_end(ap);
    f->name = malloc(nlen + 1);
    if (!f->name)
        sc_abort(SC_SDK_ABORT, "sc_register(\"%s\"): out of memory", name);
    memcpy(f->name, name, nlen + 1);
    f->name_len = (uint32_t)nlen;
    f->prefix = name_prefix(name, (uint32_t)nlen);
    f->fn = fn;
    f->ret = ret;
    f->nparams = nargs;
    nfuncs++;
}

static void write_table(void)
{
    uint64_t total = mp_sizeof_array(3) + sizeof_str(strlen(SC_TABLE_TAG)) + mp_sizeof_uint(SC_ABI_VERSION) +
                     mp_sizeof_array((uint32_t)nfuncs);
    for (int i = 0; i < nfuncs; i++) {
        const struct sc_func *f = &funcs[i];
        total += mp_sizeof_array(3) + sizeof_str(f->name_len) + mp_sizeof_array((uint32_t)f->nparams) +
                 sizeof_str(strlen(type_names[f->ret]));
        for (int j = 0; j < f->nparams; j++)
            total += sizeof_str(strlen(type_names[f->params[j]]));
    }
    if (!out_fits(total))
        sc_abort(SC_SDK_ABORT, "function table too large (%llu bytes > output buffer)",
                 (unsigned long long)(total + SC_FRAME_HEADER));
    char *w = out_payload();
    w = mp_encode_array(w, 3);
    w = mp_encode_str(w, SC_TABLE_TAG, (uint32_t)strlen(SC_TABLE_TAG));
    w = mp_encode_uint(w, SC_ABI_VERSION);
    w = mp_encode_array(w, (uint32_t)nfuncs);
    for (int i = 0; i < nfuncs; i++) {
        const struct sc_func *f = &funcs[i];
        w = mp_encode_array(w, 3);
        w = mp_encode_str(w, f->name, f->name_len);
        w = mp_encode_array(w, (uint32_t)f->nparams);
        for (int j = 0; j < f->nparams; j++)
            w = mp_encode_str(w, type_names[f->params[j]], (uint32_t)strlen(type_names[f->params[j]]));
        w = mp_encode_str(w, type_names[f->ret], (uint32_t)strlen(type_names[f->ret]));
    }
    out_commit(w);
}

/* ---- results ------------------------------------------------------------------------------ */

/* [1, code, message]: cut the message to fit the output buffer if need be. */
static void write_error(int32_t code, const char *msg, uint32_t len)
{
    uint64_t head = 1 + 1 + sizeof_sint(code);
    if (!out_fits(head + mp_sizeof_strl(0))) {
        if (out_fits(0))
            out_commit(out_payload()); /* cannot even say why: an empty (malformed) message */
        return;
    }
    uint64_t room = out_size - SC_FRAME_HEADER - head;
    if (!msg)
        len = 0;
    while (len && sizeof_str(len) > room)
        len = (uint32_t)utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    char *w = out_payload();
    w = mp_encode_array(w, 3);
    w = mp_encode_uint(w, 1);
    w = encode_sint(w, code);
    w = mp_encode_str(w, msg ? msg : "", len);
    out_commit(w);
}

static void write_errorf(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);
static void write_errorf(int32_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = format_msg(err_msg, fmt, ap);
    va_end(ap);
    write_error(code, err_msg, n);
}

static void write_result(const struct sc_func *f, const sc_value *res)
{
    if (res->is_error) {
        const char *msg = res->str.ptr ? res->str.ptr : "";
        uint32_t len = res->str.ptr ? res->str.len : 0;
        write_error(res->err_code, msg, len);
        return;
    }
    const char *problem = value_problem(res);
    if (problem) {
        write_errorf(-1, "function '%s' returned an invalid value: %s", f->name, problem);
        return;
    }
    if (res->type != f->ret) {
        write_errorf(-1, "function '%s' returned %s, but is declared to return %s", f->name,
                     sc_type_name(res->type), sc_type_name(f->ret));
        return;
    }
    uint64_t total = 1 + 1 + value_size(res);
    if (!out_fits(total)) {
        write_errorf(-1, "result too large (%llu bytes > output buffer)",
                     (unsigned long long)(total + SC_FRAME_HEADER));
        return;
    }
    char *w = out_payload();
    w = mp_encode_array(w, 2);
    w = mp_encode_uint(w, 0);
    w = value_encode(w, res);
    out_commit(w);
}

/* ---- reseeding (generation + seed in the ABI page, no VM exit) ---------------------------- */

static sc_reseed_hook reseed_hooks[SC_MAX_RESEED_HOOKS];
static int nreseed_hooks;
static uint64_t seen_generation;            /* 0 until the host writes one */

int sc_on_reseed(sc_reseed_hook hook)
{
    if (!hook || nreseed_hooks >= SC_MAX_RESEED_HOOKS)
        return -1;
    reseed_hooks[nreseed_hooks++] = hook;
    return 0;
}

static void check_generation(void)
{
    volatile struct sc_abi_page *abi = SC_ABI_PAGE;
    uint64_t g = abi->generation;
    if (g == seen_generation)
        return;
    uint8_t seed[SC_ABI_SEED_SIZE];
    for (int i = 0; i < SC_ABI_SEED_SIZE; i++)
        seed[i] = abi->seed[i];
    seen_generation = g;
    for (int i = 0; i < nreseed_hooks; i++)
        reseed_hooks[i](seed, g);
}

/* ---- the dispatch loop -------------------------------------------------------------------- */

static const struct sc_func *find_func(const char *name, uint32_t len)
{
    uint64_t prefix = name_prefix(name, len);
    for (int i = 0; i < nfuncs; i++)
        if (funcs[i].name_len == len && funcs[i].prefix == prefix &&
            (len <= 8 || memcmp(funcs[i].name + 8, name + 8, len - 8) == 0))
            return &funcs[i];
    return NULL;
}

static void handle_batch(sc_rd *r);

/* Read the call [name, [args]] from the input buffer, run it, write the result. All str/bytes
 * arguments are copied out of the input buffer before the function runs (host-call replies
 * overwrite the input buffer). */
static void handle_call(void)
{
    sc_value args[SC_MAX_PARAMS + 1];
    char why[192];
    uint32_t n = load_len(in_buf), cnt, nlen;

    check_generation();
    if (n > in_size - SC_FRAME_HEADER) {
        write_errorf(-1, "malformed call: message length %u exceeds the %llu-byte input buffer", n,
                     (unsigned long long)in_size);
        return;
    }
    sc_rd r = {in_buf + SC_FRAME_HEADER, in_buf + SC_FRAME_HEADER + n};
    int not_array = rd_array(&r, &cnt);
    if (!not_array && cnt == 3) {
        handle_batch(&r); /* [1, name, [[args], ...]]: many calls in one VM entry */
        return;
    }
    if (not_array || cnt != 2 || rd_scalar(&r, MP_STR)) {
        write_errorf(-1, "malformed call: expected [name, [args]]");
        return;
    }
    const char *name = mp_decode_str(&r.p, &nlen);
    const struct sc_func *f = find_func(name, nlen);
    if (!f) {
        uint32_t shown = (uint32_t)utf8_cut(name, nlen, SC_MAX_NAME);
        write_errorf(-1, "unknown function '%.*s'", (int)shown, name);
        return;
    }
    if (rd_array(&r, &cnt)) {
        write_errorf(-1, "malformed call of '%s': arguments are not an array", f->name);
        return;
    }
    if (cnt != (uint32_t)f->nparams) {
        write_errorf(-1, "function '%s' takes %d argument%s, got %u", f->name, f->nparams,
                     f->nparams == 1 ? "" : "s", cnt);
        return;
    }
    for (int i = 0; i < f->nparams; i++) {
        int rc = decode_value(&r, f->params[i], &args[i], why, sizeof why);
        if (rc) {
            if (rc == -2)
                write_errorf(-1, "out of guest memory copying argument %d of '%s'", i, f->name);
            else
                write_errorf(-1, "argument %d of '%s': %s", i, f->name, why);
            copies_free();
            return;
        }
    }
    if (r.p != r.end) {
        write_errorf(-1, "malformed call of '%s': trailing bytes", f->name);
        copies_free();
        return;
    }
    args[f->nparams] = sc_void();

    sc_value res = f->fn(args);
    flush_stdio();
    write_result(f, &res);
    copies_free();
}

/* ---- batched calls ------------------------------------------------------------------------ *
 * docs/guest-abi.md, "Batched calls". The input holds [1, name, [[args], ...]]; the items run
 * one after another and their results are written as one array into the output buffer:
 * [2, [item, ...]] when the batch is complete, or [3, [item, ...]] when the output buffer is
 * full (the host reads it and resumes the guest, which goes on with the next item). An item is
 * the result value, or an ext (type 1) holding [code, message] when the function returned an
 * error (or an invalid or oversized result). Host calls made by an item overwrite both
 * buffers, so the batch's input message and the results written so far are saved around them
 * (batch_save / batch_restore, only while a batch runs). */

#define SC_BATCH_CALL 1
#define SC_BATCH_DONE 2
#define SC_BATCH_MORE 3
#define SC_BATCH_ERROR_EXT 1
#define SC_BATCH_HEAD 7 /* fixarray(2), tag, array32 header */

static int batch_active;
static char *batch_w;       /* next free byte after the items written so far */
static uint32_t batch_n;    /* items written since the last flush */
static char *saved_in, *saved_out;
static size_t saved_in_n, saved_out_n;

static char *batch_items(void) { return out_payload() + SC_BATCH_HEAD; }

/* Bytes left for items in the output buffer (all of it when empty is room_empty). */
static uint64_t batch_room(void) { return out_size - SC_FRAME_HEADER - SC_BATCH_HEAD - (uint64_t)(batch_w - batch_items()); }
static uint64_t batch_room_empty(void) { return out_size - SC_FRAME_HEADER - SC_BATCH_HEAD; }

static void batch_commit(unsigned tag)
{
    unsigned char *p = (unsigned char *)out_payload();
    p[0] = 0x92;
    p[1] = (unsigned char)tag;
    p[2] = 0xdd;
    p[3] = (unsigned char)(batch_n >> 24);
    p[4] = (unsigned char)(batch_n >> 16);
    p[5] = (unsigned char)(batch_n >> 8);
    p[6] = (unsigned char)batch_n;
    out_commit(batch_w);
}

/* The output buffer is full: hand the items so far to the host and go on when resumed. */
static void batch_flush_more(void)
{
    batch_commit(SC_BATCH_MORE);
    sc_port_out(SC_OUT_RETURN);
    batch_w = batch_items();
    batch_n = 0;
}

static uint64_t ext_header_size(uint64_t n) { return n <= 0xff ? 3 : n <= 0xffff ? 4 : 6; }

static char *encode_ext_header(char *w, uint32_t n, int8_t type)
{
    unsigned char *u = (unsigned char *)w;
    if (n <= 0xff) {
        u[0] = 0xc7; u[1] = (unsigned char)n; u[2] = (unsigned char)type;
        return w + 3;
    }
    if (n <= 0xffff) {
        u[0] = 0xc8; u[1] = (unsigned char)(n >> 8); u[2] = (unsigned char)n; u[3] = (unsigned char)type;
        return w + 4;
    }
    u[0] = 0xc9; u[1] = (unsigned char)(n >> 24); u[2] = (unsigned char)(n >> 16);
    u[3] = (unsigned char)(n >> 8); u[4] = (unsigned char)n; u[5] = (unsigned char)type;
    return w + 6;
}

/* Append an item error ext(1, [code, message]), cutting the message to fit an empty buffer. */
static void batch_put_error(int32_t code, const char *msg, uint32_t len)
{
    uint64_t fixed = 1 + sizeof_sint(code);
    if (!msg)
        len = 0;
    while (len && ext_header_size(fixed + sizeof_str(len)) + fixed + sizeof_str(len) > batch_room_empty())
        len = (uint32_t)utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    uint64_t body = fixed + sizeof_str(len);
    if (ext_header_size(body) + body > batch_room())
        batch_flush_more();
    char *w = encode_ext_header(batch_w, (uint32_t)body, SC_BATCH_ERROR_EXT);
    w = mp_encode_array(w, 2);
    w = encode_sint(w, code);
    w = mp_encode_str(w, msg ? msg : "", len);
    batch_w = w;
    batch_n++;
}

static void batch_put_errorf(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);
static void batch_put_errorf(int32_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = format_msg(err_msg, fmt, ap);
    va_end(ap);
    batch_put_error(code, err_msg, n);
}

/* Append one item's result (write_result's checks, as per-item errors). */
static void batch_put_result(const struct sc_func *f, const sc_value *res)
{
    if (res->is_error) {
        batch_put_error(res->err_code, res->str.ptr, res->str.ptr ? res->str.len : 0);
        return;
    }
    const char *problem = value_problem(res);
    if (problem) {
        batch_put_errorf(-1, "function '%s' returned an invalid value: %s", f->name, problem);
        return;
    }
    if (res->type != f->ret) {
        batch_put_errorf(-1, "function '%s' returned %s, but is declared to return %s", f->name,
                         sc_type_name(res->type), sc_type_name(f->ret));
        return;
    }
    uint64_t size = value_size(res);
    if (size > batch_room_empty()) {
        batch_put_errorf(-1, "result too large (%llu bytes > output buffer)",
                         (unsigned long long)(size + SC_FRAME_HEADER + SC_BATCH_HEAD));
        return;
    }
    if (size > batch_room())
        batch_flush_more();
    batch_w = value_encode(batch_w, res);
    batch_n++;
}

/* Save the batch's input message and the items written so far before a host call overwrites
 * the buffers. -1 when the heap is exhausted. */
static int batch_save(void)
{
    if (!batch_active)
        return 0;
    saved_in_n = SC_FRAME_HEADER + (size_t)load_len(in_buf); /* checked by handle_call */
    saved_out_n = (size_t)(batch_w - out_buf);
    saved_in = malloc(saved_in_n);
    saved_out = malloc(saved_out_n);
    if (!saved_in || !saved_out) {
        free(saved_in);
        free(saved_out);
        saved_in = saved_out = NULL;
        return -1;
    }
    memcpy(saved_in, in_buf, saved_in_n);
    memcpy(saved_out, out_buf, saved_out_n);
    return 0;
}

static void batch_restore(void)
{
    if (!saved_in)
        return;
    memcpy(in_buf, saved_in, saved_in_n);
    memcpy(out_buf, saved_out, saved_out_n);
    free(saved_in);
    free(saved_out);
    saved_in = saved_out = NULL;
}

static void batch_fail(const char *what)
{
    batch_active = 0;
    copies_free();
    write_errorf(-1, "malformed batch call: %s", what);
}

/* The rest of a batch call [1, name, [[args], ...]] whose 3-element array header handle_call
 * has read: run every item and write the batch result (partial results on the way when the
 * output buffer fills). Items are checked one by one as they run; a structurally malformed
 * item ends the batch with a call error (the host never sends one: it checks every item). */
static void handle_batch(sc_rd *r)
{
    sc_value args[SC_MAX_PARAMS + 1];
    char why[192];
    uint32_t nlen, count, cnt;

    if (rd_scalar(r, MP_UINT) || mp_decode_uint(&r->p) != SC_BATCH_CALL || rd_scalar(r, MP_STR)) {
        write_errorf(-1, "malformed call: expected [name, [args]] or [1, name, [[args], ...]]");
        return;
    }
    const char *name = mp_decode_str(&r->p, &nlen);
    const struct sc_func *f = find_func(name, nlen);
    if (!f) {
        uint32_t shown = (uint32_t)utf8_cut(name, nlen, SC_MAX_NAME);
        write_errorf(-1, "unknown function '%.*s'", (int)shown, name);
        return;
    }
    if (rd_array(r, &count)) {
        write_errorf(-1, "malformed batch call of '%s': items are not an array", f->name);
        return;
    }
    if (!out_fits(SC_BATCH_HEAD)) {
        write_errorf(-1, "output buffer too small for a batch");
        return;
    }
    batch_active = 1;
    batch_w = batch_items();
    batch_n = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (rd_array(r, &cnt) || cnt != (uint32_t)f->nparams) {
            batch_fail("an item is not an argument array of the function's arity");
            return;
        }
        for (int k = 0; k < f->nparams; k++) {
            int rc = decode_value(r, f->params[k], &args[k], why, sizeof why);
            if (rc) {
                batch_fail(rc == -2 ? "out of guest memory copying an argument" : why);
                return;
            }
        }
        args[f->nparams] = sc_void();
        sc_value res = f->fn(args);
        flush_stdio();
        batch_put_result(f, &res);
        copies_free();
    }
    if (r->p != r->end) {
        batch_fail("trailing bytes");
        return;
    }
    batch_active = 0;
    batch_commit(SC_BATCH_DONE);
}

/* ---- host calls --------------------------------------------------------------------------- */

static int host_fail(const char *fmt, ...) SC_PRINTF(1, 2);
static int host_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    format_msg(host_err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *sc_host_error(void) { return host_err; }

static int read_host_reply(const char *name, sc_type ret, sc_value *result);

int sc_call_host(const char *name, sc_type ret, sc_value *result, int nargs, ...)
{
    sc_value a[SC_MAX_PARAMS];
    if (result)
        *result = sc_void();
    if (!name || !*name)
        return host_fail("sc_call_host: empty host function name");
    size_t nlen = strlen(name);
    if (nlen > SC_MAX_NAME)
        return host_fail("sc_call_host: host function name longer than %d bytes", SC_MAX_NAME);
    if (!type_valid(ret))
        return host_fail("sc_call_host(\"%s\"): invalid return type %d", name, (int)ret);
    if (nargs < 0 || nargs > SC_MAX_PARAMS)
        return host_fail("sc_call_host(\"%s\"): %d arguments (0..%d allowed)", name, nargs, SC_MAX_PARAMS);
    va_list ap;
    va_start(ap, nargs);
    for (int i = 0; i < nargs; i++)
        a[i] = va_arg(ap, sc_value);
    va_end(ap);

    uint64_t total = mp_sizeof_array(3) + sizeof_str(nlen) + mp_sizeof_array((uint32_t)nargs) +
                     sizeof_str(strlen(type_names[ret]));
    for (int i = 0; i < nargs; i++) {
        const char *problem = value_problem(&a[i]);
        if (!problem && a[i].type == SC_VOID)
            problem = "void is not an argument type";
        if (!problem && a[i].is_error)
            problem = "an sc_error value is not an argument";
        if (problem)
            return host_fail("sc_call_host(\"%s\"): argument %d: %s", name, i, problem);
        total += value_size(&a[i]);
    }
    if (!out_fits(total))
        return host_fail("host call request too large (%llu bytes > output buffer)",
                         (unsigned long long)(total + SC_FRAME_HEADER));

    flush_stdio();
    if (batch_save())
        return host_fail("out of guest memory saving the batch around host call '%s'", name);
    char *w = out_payload();
    w = mp_encode_array(w, 3);
    w = mp_encode_str(w, name, (uint32_t)nlen);
    w = mp_encode_array(w, (uint32_t)nargs);
    for (int i = 0; i < nargs; i++)
        w = value_encode(w, &a[i]);
    w = mp_encode_str(w, type_names[ret], (uint32_t)strlen(type_names[ret]));
    out_commit(w);

    sc_port_out(SC_OUT_HOSTCALL);
    int rc = read_host_reply(name, ret, result);
    batch_restore();
    return rc;
}

/* The host-call reply in the input buffer: [0, value] or [1, message]. */
static int read_host_reply(const char *name, sc_type ret, sc_value *result)
{
    char why[192];
    uint32_t n = load_len(in_buf), cnt;
    if (n > in_size - SC_FRAME_HEADER)
        return host_fail("malformed host-call reply from '%s': length %u exceeds the input buffer", name, n);
    sc_rd r = {in_buf + SC_FRAME_HEADER, in_buf + SC_FRAME_HEADER + n};
    if (rd_array(&r, &cnt) || cnt != 2 || rd_scalar(&r, MP_UINT))
        return host_fail("malformed host-call reply from '%s'", name);
    uint64_t status = mp_decode_uint(&r.p);
    if (status == 1) {
        uint32_t mlen;
        if (rd_scalar(&r, MP_STR))
            return host_fail("malformed host-call error reply from '%s'", name);
        const char *m = mp_decode_str(&r.p, &mlen);
        size_t keep = utf8_cut(m, mlen, SC_MSG_MAX);
        memcpy(host_err, m, keep);
        host_err[keep] = '\0';
        return -1;
    }
    if (status != 0)
        return host_fail("malformed host-call reply from '%s': status %llu", name, (unsigned long long)status);
    sc_value v;
    int rc = decode_value(&r, ret, &v, why, sizeof why);
    if (rc == -2)
        return host_fail("out of guest memory copying the result of host function '%s'", name);
    if (rc)
        return host_fail("host function '%s' returned a bad value: %s", name, why);
    if (r.p != r.end)
        return host_fail("malformed host-call reply from '%s': trailing bytes", name);
    if (result)
        *result = v;
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static int buffer_ok(uint64_t addr, uint64_t size)
{
    return addr >= SC_GUEST_BASE && addr < SC_MAX_MEMORY && size >= SC_FRAME_HEADER &&
           size <= SC_MAX_MEMORY - addr;
}

int main(void)
{
    volatile struct sc_abi_page *abi = SC_ABI_PAGE;
    uint64_t magic = abi->magic;
    if (magic != SC_ABI_MAGIC)
        sc_abort(SC_SDK_ABORT, "bad ABI page magic %#llx", (unsigned long long)magic); /* no output buffer */
    uint64_t oa = abi->output_addr, os = abi->output_size, ia = abi->input_addr, is = abi->input_size;
    if (buffer_ok(oa, os)) {
        out_buf = (char *)(uintptr_t)oa;
        out_size = os;
        out_ok = 1;
    }
    uint64_t version = abi->version;
    if (version != SC_ABI_VERSION)
        sc_abort(SC_SDK_ABORT, "ABI version mismatch: host %llu, guest SDK %d", (unsigned long long)version,
                 SC_ABI_VERSION);
    if (!out_ok)
        sc_abort(SC_SDK_ABORT, "bad output buffer in the ABI page");
    if (!buffer_ok(ia, is))
        sc_abort(SC_SDK_ABORT, "bad input buffer in the ABI page (%#llx, %llu bytes)", (unsigned long long)ia,
                 (unsigned long long)is);
    in_buf = (char *)(uintptr_t)ia;
    in_size = is;

    snapcell_main();
    init_done = 1;
    flush_stdio();
    copies_free(); /* results of host calls made during init */
    write_table();
    for (;;) {
        sc_port_out(SC_OUT_RETURN);
        handle_call();
    }
}
#endif /* !SC_ARENA_NATIVE_TEST */
