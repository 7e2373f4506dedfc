/*
 * snapcell guest SDK: the public API for guest authors.
 *
 * A guest is a static x86-64 musl program (see guests/README.md). It does NOT define main():
 * the SDK's dispatch.c does. Instead it defines
 *
 *     void snapcell_main(void) { sc_register("Add", Add, SC_I32, 2, SC_I32, SC_I32); ... }
 *
 * which registers the functions the host may call. After snapcell_main returns, the runtime
 * publishes the function table to the host and serves calls forever.
 *
 * Guest functions have the signature   sc_value fn(const sc_value *args);
 * args[i] has exactly the type declared at registration (the runtime checks every call).
 * A function returns a value of its declared return type (sc_void() for SC_VOID), or
 * sc_error(code, fmt, ...) to report an error to the host (the host raises GuestError; the
 * sandbox stays usable). sc_abort() instead ends the sandbox's current run (OUT_ABORT).
 *
 * Memory ownership
 * ----------------
 *  - str/bytes ARGUMENTS given to a guest function, and str/bytes RESULTS of sc_call_host, are
 *    copies in guest heap memory owned by the runtime. str values are NUL-terminated as well
 *    as carrying `len` (a str may contain embedded NULs; `len` is authoritative). They stay
 *    valid until the current guest function returns; the runtime frees them after it has
 *    encoded the function's result (so returning an argument or a host-call result as is,
 *    e.g. `return args[0];`, is fine). Do not free them yourself.
 *  - A str/bytes value a guest function RETURNS must stay valid until the function returns
 *    (the runtime copies it into the output buffer right after). The runtime NEVER frees a
 *    returned pointer: return static storage, a pointer the guest keeps and reuses (e.g. a
 *    static buffer grown with realloc), or a runtime-owned copy as above. A buffer malloc'd
 *    per call and returned is leaked.
 *  - sc_str()/sc_str_n()/sc_bytes() do not copy: they only record the pointer and length.
 *  - The message of sc_error() is formatted into a runtime buffer (at most 4096 bytes, cut at
 *    a UTF-8 character boundary) that is reused by the next sc_error() call.
 *
 * Strings sent to the host (str values, names, messages) must be valid UTF-8: the host
 * rejects invalid UTF-8 as a malformed message.
 */
#ifndef SNAPCELL_H
#define SNAPCELL_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define SC_NORETURN [[noreturn]]
#else
#define SC_NORETURN _Noreturn
#endif

#if defined(__GNUC__)
#define SC_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define SC_PRINTF(fmt_index, first_arg)
#endif

/* Value types; their wire names are "void" "i32" "u32" "i64" "u64" "f32" "f64" "str" "bool"
 * "bytes". SC_VOID is only a return type. */
typedef enum { SC_VOID, SC_I32, SC_U32, SC_I64, SC_U64, SC_F32, SC_F64, SC_STR, SC_BOOL, SC_BYTES } sc_type;

/* A typed value. Read the union member matching `type`. When is_error is set (made by
 * sc_error), err_code is the error code and `str` holds the message. */
typedef struct sc_value {
    sc_type type;
    union {
        int32_t i32;
        uint32_t u32;
        int64_t i64;
        uint64_t u64;
        float f32;
        double f64;
        bool b;
        struct { const char *ptr; uint32_t len; } str;
        struct { const uint8_t *ptr; uint32_t len; } bytes;
    };
    int is_error;
    int32_t err_code;
} sc_value;

/* A guest function: args has as many elements as declared parameters (none: args is still a
 * valid pointer, not to be read). */
typedef sc_value (*sc_guest_fn)(const sc_value *args);

/* Limits (the host enforces the same). */
#define SC_MAX_FUNCTIONS 256 /* registered functions */
#define SC_MAX_PARAMS    16  /* parameters per function, and arguments per sc_call_host */
#define SC_MAX_NAME      256 /* bytes of a function name (non-empty UTF-8) */

/* Provided by the guest author: registers the guest's functions with sc_register(). Called
 * once, by the runtime's main(), after musl has initialised. */
void snapcell_main(void);

/* Register a guest function callable by the host as `name`, returning `ret`, taking `nargs`
 * parameters whose sc_type values follow (SC_VOID is not a parameter type).
 * Example: sc_register("Add", Add, SC_I32, 2, SC_I32, SC_I32);
 * Only valid inside snapcell_main(). The name is copied. Invalid use (too many functions or
 * parameters, empty/too long/duplicate name, NULL fn, bad type, called after init) is a
 * programming error and aborts (sc_abort with code -1). */
void sc_register(const char *name, sc_guest_fn fn, sc_type ret, int nargs, ...);

/* Value constructors. */
sc_value sc_void(void);
sc_value sc_i32(int32_t v);
sc_value sc_u32(uint32_t v);
sc_value sc_i64(int64_t v);
sc_value sc_u64(uint64_t v);
sc_value sc_f32(float v);
sc_value sc_f64(double v);
sc_value sc_bool(bool v);
sc_value sc_str(const char *nul_terminated);       /* len = strlen; NULL = "" (not copied) */
sc_value sc_str_n(const char *p, uint32_t len);     /* not copied */
sc_value sc_bytes(const void *p, uint32_t len);     /* not copied */

/* A guest-returned error: the host raises GuestError(code, message) and the sandbox is not
 * poisoned. Return it from a guest function: `return sc_error(2, "bad input %d", x);`
 * The message is printf-formatted into a runtime buffer (see "Memory ownership"). */
sc_value sc_error(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);

/* Call the host function `name` with `nargs` sc_value arguments (varargs, each an sc_value,
 * e.g. sc_i32(1)), expecting a result of type `ret`. On success returns 0 and, if `result` is
 * not NULL, stores the result there (str/bytes results are runtime-owned copies, see
 * "Memory ownership"). On failure (unknown host function, type mismatch, the host function
 * raised, request too large for the output buffer, malformed reply) returns -1, stores
 * sc_void() in *result and sc_host_error() describes the failure.
 * stdout and stderr are flushed before the request so guest output keeps its order. */
int sc_call_host(const char *name, sc_type ret, sc_value *result, int nargs, ...);

/* The message of the last failed sc_call_host (NUL-terminated, at most 4096 bytes); "" if
 * none failed yet. Valid until the next sc_call_host. */
const char *sc_host_error(void);

/* Abort the guest: flushes stdout/stderr, writes [code, message] to the output buffer and
 * executes `out OUT_ABORT`. The guest never resumes. The message is printf-formatted and
 * capped at 4096 bytes (cut at a UTF-8 character boundary). */
SC_NORETURN void sc_abort(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);

/* A reseed hook: called with 32 fresh random bytes whenever the host has made this guest state a
 * new sandbox (from_snapshot, restore): the host writes a new generation and seed into the ABI
 * page as part of the restore, and the runtime compares the generation at the start of every
 * dispatched call (no VM exit). Reseed userland PRNGs here so siblings of one snapshot differ.
 * At most SC_MAX_RESEED_HOOKS hooks; register them in snapcell_main(). Returns 0, or -1 when
 * the table is full or hook is NULL. */
#define SC_MAX_RESEED_HOOKS 8
typedef void (*sc_reseed_hook)(const uint8_t seed[32], uint64_t generation);
int sc_on_reseed(sc_reseed_hook hook);

/* A guest's own system calls, served in the guest before the SDK's (e.g. sockets tunnelled
 * through host calls: guests/python/sockets.c). The hook sees every system call first and
 * returns 1 with *ret set (the result, -errno on failure) when it served it, 0 to leave it to
 * the SDK. It runs in the system call handler: only after snapcell_main() started it may call
 * sc_call_host (never for calls the SDK's own start-up makes). NULL removes it. */
typedef int (*sc_syscall_hook)(long nr, long a0, long a1, long a2, long a3, long a4, long a5,
                               long *ret);
void sc_set_syscall_hook(sc_syscall_hook hook);

/* The wire name of a type ("i32", ...), or "?" for an invalid value. */
const char *sc_type_name(sc_type t);

#ifdef __cplusplus
}
#endif

/* Dynamic guests (libmap.c): refuse every new executable mapping from now on, the guest's
 * side of the W^X seal (docs/security.md); and whether that was done. */
void sc_lib_seal(void);
int sc_lib_is_sealed(void);

#endif /* SNAPCELL_H */
