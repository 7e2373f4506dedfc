/*
 * snapcell guest SDK runtime: what its files share (internal: not for guest authors).
 *
 *   memory.c    the heap arena of the ABI page: mmap, munmap, mremap, madvise, brk
 *   libmap.c    a dynamic guest's library region: file-backed and MAP_FIXED mmap, mprotect
 *   syscalls.c  __sc_syscall (entered from entry.S), forwarding to the host, sleep, signals,
 *               the in-guest file system hook (fs.c)
 *   messages.c  values, bounded MessagePack reading, results, aborts, per-call copies
 *   dispatch.c  registration and the function table, the dispatch loop, batched calls, host
 *               calls, reseeding, main() and the per-call state (buffers, messages)
 *
 * Names shared between files start with sc__. Compiling memory.c and syscalls.c with
 * -DSC_ARENA_NATIVE_TEST builds the system call handler without port I/O, so the arena can be
 * unit-tested natively (tests/unit/test_arena.py sets the arena up with sc_arena_test_setup()).
 */
#ifndef SC_INTERNAL_H
#define SC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "snapcell_abi.h"

#if defined(__has_attribute)
#if __has_attribute(no_stack_protector)
#define SC_NOSSP __attribute__((no_stack_protector))
#endif
#endif
#ifndef SC_NOSSP
#define SC_NOSSP
#endif

/* ---- memory.c: the system calls served from the heap arena -------------------------------- */

long sc__sys_mmap(uint64_t addr, uint64_t len, uint64_t prot, uint64_t flags, uint64_t fd,
                  uint64_t off);
long sc__sys_munmap(uint64_t addr, uint64_t len);
long sc__sys_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, uint64_t flags);
long sc__sys_madvise(uint64_t addr, uint64_t len, uint64_t advice);
long sc__sys_brk(void);
#ifdef SC_ARENA_NATIVE_TEST
void sc_arena_test_setup(void *addr, uint64_t size);
#endif

/* ---- libmap.c: a dynamic guest's library region (not in the native arena test) ------------ */

int sc__lib_present(void);
int sc__lib_owns(uint64_t addr);
long sc__lib_mmap(uint64_t addr, uint64_t len, uint64_t prot, uint64_t flags, uint64_t fd,
                  uint64_t off);
long sc__lib_munmap(uint64_t addr, uint64_t len);
long sc__lib_mprotect(uint64_t addr, uint64_t len, uint64_t prot);

#ifndef SC_ARENA_NATIVE_TEST
#include "snapcell.h"
#include "msgpuck.h"

static inline void sc_port_out(uint16_t port)
{
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(port) : "memory");
}

#define SC_MSG_MAX SC_MAX_ABORT_MESSAGE     /* 4096: cap of error/abort/host-error messages */
#define SC_MSG_BUF (SC_MSG_MAX + 8)         /* room to see the character cut at the cap */
#define SC_SDK_ABORT (-1)                   /* abort code for SDK/ABI errors */

/* A registered function (the debugger reads funcs[] of dispatch.c with this layout:
 * snapcell/debug/sandbox_target.py). */
struct sc_func {
    uint64_t prefix;                        /* the name's first 8 bytes, zero padded */
    char *name;
    uint32_t name_len;
    sc_guest_fn fn;
    sc_type ret;
    int nparams;
    sc_type params[SC_MAX_PARAMS];
};

union sc_copy;

/* ---- dispatch.c: the per-call state (defined together there, see the note) ---------------- */

extern char *sc__in_buf, *sc__out_buf;
extern uint64_t sc__in_size, sc__out_size;
extern int sc__out_ok;                      /* the output buffer can be written (ABI page ok) */
extern union sc_copy *sc__copies;           /* per-call copies, see copy_alloc() (messages.c) */
extern char sc__err_msg[SC_MSG_BUF];        /* sc_error() and runtime-generated call errors */

/* ---- messages.c --------------------------------------------------------------------------- */

extern const char *const sc__type_names[];
uint32_t sc__format_msg(char *buf, const char *fmt, va_list ap);
void sc__copies_free(void);
const char *sc__value_problem(const sc_value *v);
uint64_t sc__value_size(const sc_value *v);
char *sc__value_encode(char *w, const sc_value *v);

/* Bounded MessagePack reading: everything read comes from the host (see messages.c). */
typedef struct {
    const char *p;
    const char *end;
} sc_rd;

int sc__rd_array(sc_rd *r, uint32_t *count);
int sc__rd_scalar(const sc_rd *r, enum mp_type t);
int sc__decode_value(sc_rd *r, sc_type want, sc_value *out, char *why, size_t whysz);
void sc__write_errorf(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);
/* Why `res` cannot be `f`'s result (written into `why`, which is returned), NULL when it can. */
const char *sc__result_problem(const struct sc_func *f, const sc_value *res, char *why,
                               size_t whysz);
void sc__write_result(const struct sc_func *f, const sc_value *res);

/* ---- small helpers (inline: every call uses them) ----------------------------------------- */

static inline int sc__type_valid(sc_type t) { return (unsigned)t <= (unsigned)SC_BYTES; }

/* Length of s[0..len) cut to at most max bytes at a UTF-8 character boundary. s[max] must be
 * readable when len > max. */
static inline size_t sc__utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && max - n < 4 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* MessagePack integer of either sign (msgpuck's mp_encode_int takes negatives only). */
static inline uint32_t sc__sizeof_sint(int64_t v) { return v < 0 ? mp_sizeof_int(v) : mp_sizeof_uint((uint64_t)v); }
static inline char *sc__encode_sint(char *w, int64_t v) { return v < 0 ? mp_encode_int(w, v) : mp_encode_uint(w, (uint64_t)v); }

static inline uint64_t sc__sizeof_str(uint64_t len) { return mp_sizeof_strl((uint32_t)len) + len; }

/* Can a message of n payload bytes be written to the output buffer? */
static inline int sc__out_fits(uint64_t n) { return sc__out_ok && sc__out_size >= SC_FRAME_HEADER && n <= sc__out_size - SC_FRAME_HEADER; }

static inline char *sc__out_payload(void) { return sc__out_buf + SC_FRAME_HEADER; }

static inline void sc__out_commit(const char *end)
{
    uint32_t n = (uint32_t)(end - sc__out_payload());
    memcpy(sc__out_buf, &n, sizeof n); /* x86-64 is little-endian */
}

static inline uint32_t sc__load_len(const char *buf)
{
    uint32_t n;
    memcpy(&n, buf, sizeof n);
    return n;
}
#endif /* !SC_ARENA_NATIVE_TEST */

#endif /* SC_INTERNAL_H */
