/*
 * snapcell guest SDK runtime: registration and dispatch (docs/guest-abi.md, "Start-up",
 * "Batched calls", "Reseeding").
 *
 * main() checks the ABI page, calls the guest author's snapcell_main(), publishes the
 * function table (`out OUT_RETURN`) and then serves calls forever: single calls, batched
 * calls, and the host calls a function makes while it runs. Reseeding hooks run when the host
 * bumps the generation in the ABI page.
 */
#define _GNU_SOURCE 1
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>

#include "sc_internal.h"

/*
 * Every page a call touches costs a fault the first time after the guest memory is mapped
 * afresh (from_snapshot on a new VM, restoring another snapshot), several microseconds under
 * shadow paging. So the state every call reads is defined together here, for all the
 * runtime's files (GCC lays it out together, next to the start of funcs[]); find_func()
 * compares inline name prefixes (no heap access for names of up to 8 bytes); and stdio is
 * flushed only when something is pending (fflush writes to the FILE even when nothing is).
 * host_err comes first so that it does not land between the buffers and funcs[] (GCC emits
 * a file's static variables in reverse order; look with `nm -n` after changing this).
 * The debugger finds funcs[] by its symbol name (snapcell/debug/sandbox_target.py).
 */
static char host_err[SC_MSG_BUF];           /* sc_host_error() */
static struct sc_func funcs[SC_MAX_FUNCTIONS];
static int nfuncs;
static int init_done;

char *sc__in_buf, *sc__out_buf;
uint64_t sc__in_size, sc__out_size;
int sc__out_ok;
union sc_copy *sc__copies;
char sc__err_msg[SC_MSG_BUF];

/* Write out what the guest left in stdout's and stderr's buffers. */
static void flush_stdio(void)
{
    if (__fpending(stdout))
        fflush(stdout);
    if (__fpending(stderr))
        fflush(stderr);
}

/* The first 8 bytes of a name of len bytes, zero padded (a quick, heap-free first compare). */
static uint64_t name_prefix(const char *name, uint32_t len)
{
    uint64_t p = 0;
    memcpy(&p, name, len < 8 ? len : 8);
    return p;
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
    if (!sc__type_valid(ret))
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
        if (!sc__type_valid((sc_type)t) || t == SC_VOID) {
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
    uint64_t total = mp_sizeof_array(3) + sc__sizeof_str(strlen(SC_TABLE_TAG)) + mp_sizeof_uint(SC_ABI_VERSION) +
                     mp_sizeof_array((uint32_t)nfuncs);
    for (int i = 0; i < nfuncs; i++) {
        const struct sc_func *f = &funcs[i];
        total += mp_sizeof_array(3) + sc__sizeof_str(f->name_len) + mp_sizeof_array((uint32_t)f->nparams) +
                 sc__sizeof_str(strlen(sc__type_names[f->ret]));
        for (int j = 0; j < f->nparams; j++)
            total += sc__sizeof_str(strlen(sc__type_names[f->params[j]]));
    }
    if (!sc__out_fits(total))
        sc_abort(SC_SDK_ABORT, "function table too large (%llu bytes > output buffer)",
                 (unsigned long long)(total + SC_FRAME_HEADER));
    char *w = sc__out_payload();
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
            w = mp_encode_str(w, sc__type_names[f->params[j]], (uint32_t)strlen(sc__type_names[f->params[j]]));
        w = mp_encode_str(w, sc__type_names[f->ret], (uint32_t)strlen(sc__type_names[f->ret]));
    }
    sc__out_commit(w);
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
    uint32_t n = sc__load_len(sc__in_buf), cnt, nlen;

    check_generation();
    if (n > sc__in_size - SC_FRAME_HEADER) {
        sc__write_errorf(-1, "malformed call: message length %u exceeds the %llu-byte input buffer", n,
                     (unsigned long long)sc__in_size);
        return;
    }
    sc_rd r = {sc__in_buf + SC_FRAME_HEADER, sc__in_buf + SC_FRAME_HEADER + n};
    int not_array = sc__rd_array(&r, &cnt);
    if (!not_array && cnt == 3) {
        handle_batch(&r); /* [1, name, [[args], ...]]: many calls in one VM entry */
        return;
    }
    if (not_array || cnt != 2 || sc__rd_scalar(&r, MP_STR)) {
        sc__write_errorf(-1, "malformed call: expected [name, [args]]");
        return;
    }
    const char *name = mp_decode_str(&r.p, &nlen);
    const struct sc_func *f = find_func(name, nlen);
    if (!f) {
        uint32_t shown = (uint32_t)sc__utf8_cut(name, nlen, SC_MAX_NAME);
        sc__write_errorf(-1, "unknown function '%.*s'", (int)shown, name);
        return;
    }
    if (sc__rd_array(&r, &cnt)) {
        sc__write_errorf(-1, "malformed call of '%s': arguments are not an array", f->name);
        return;
    }
    if (cnt != (uint32_t)f->nparams) {
        sc__write_errorf(-1, "function '%s' takes %d argument%s, got %u", f->name, f->nparams,
                     f->nparams == 1 ? "" : "s", cnt);
        return;
    }
    for (int i = 0; i < f->nparams; i++) {
        int rc = sc__decode_value(&r, f->params[i], &args[i], why, sizeof why);
        if (rc) {
            if (rc == -2)
                sc__write_errorf(-1, "out of guest memory copying argument %d of '%s'", i, f->name);
            else
                sc__write_errorf(-1, "argument %d of '%s': %s", i, f->name, why);
            sc__copies_free();
            return;
        }
    }
    if (r.p != r.end) {
        sc__write_errorf(-1, "malformed call of '%s': trailing bytes", f->name);
        sc__copies_free();
        return;
    }
    args[f->nparams] = sc_void();

    sc_value res = f->fn(args);
    flush_stdio();
    sc__write_result(f, &res);
    sc__copies_free();
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

static char *batch_items(void) { return sc__out_payload() + SC_BATCH_HEAD; }

/* Bytes left for items in the output buffer (all of it when empty is room_empty). */
static uint64_t batch_room(void) { return sc__out_size - SC_FRAME_HEADER - SC_BATCH_HEAD - (uint64_t)(batch_w - batch_items()); }
static uint64_t batch_room_empty(void) { return sc__out_size - SC_FRAME_HEADER - SC_BATCH_HEAD; }

static void batch_commit(unsigned tag)
{
    unsigned char *p = (unsigned char *)sc__out_payload();
    p[0] = 0x92;
    p[1] = (unsigned char)tag;
    p[2] = 0xdd;
    p[3] = (unsigned char)(batch_n >> 24);
    p[4] = (unsigned char)(batch_n >> 16);
    p[5] = (unsigned char)(batch_n >> 8);
    p[6] = (unsigned char)batch_n;
    sc__out_commit(batch_w);
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
    uint64_t fixed = 1 + sc__sizeof_sint(code);
    if (!msg)
        len = 0;
    while (len && ext_header_size(fixed + sc__sizeof_str(len)) + fixed + sc__sizeof_str(len) > batch_room_empty())
        len = (uint32_t)sc__utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    uint64_t body = fixed + sc__sizeof_str(len);
    if (ext_header_size(body) + body > batch_room())
        batch_flush_more();
    char *w = encode_ext_header(batch_w, (uint32_t)body, SC_BATCH_ERROR_EXT);
    w = mp_encode_array(w, 2);
    w = sc__encode_sint(w, code);
    w = mp_encode_str(w, msg ? msg : "", len);
    batch_w = w;
    batch_n++;
}

static void batch_put_errorf(int32_t code, const char *fmt, ...) SC_PRINTF(2, 3);
static void batch_put_errorf(int32_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = sc__format_msg(sc__err_msg, fmt, ap);
    va_end(ap);
    batch_put_error(code, sc__err_msg, n);
}

/* Append one item's result (sc__write_result's checks, as per-item errors). */
static void batch_put_result(const struct sc_func *f, const sc_value *res)
{
    if (res->is_error) {
        batch_put_error(res->err_code, res->str.ptr, res->str.ptr ? res->str.len : 0);
        return;
    }
    char why[SC_MAX_NAME + 160];
    if (sc__result_problem(f, res, why, sizeof why)) {
        batch_put_errorf(-1, "%s", why);
        return;
    }
    uint64_t size = sc__value_size(res);
    if (size > batch_room_empty()) {
        batch_put_errorf(-1, "result too large (%llu bytes > output buffer)",
                         (unsigned long long)(size + SC_FRAME_HEADER + SC_BATCH_HEAD));
        return;
    }
    if (size > batch_room())
        batch_flush_more();
    batch_w = sc__value_encode(batch_w, res);
    batch_n++;
}

/* Save the batch's input message and the items written so far before a host call overwrites
 * the buffers. -1 when the heap is exhausted. */
static int batch_save(void)
{
    if (!batch_active)
        return 0;
    saved_in_n = SC_FRAME_HEADER + (size_t)sc__load_len(sc__in_buf); /* checked by handle_call */
    saved_out_n = (size_t)(batch_w - sc__out_buf);
    saved_in = malloc(saved_in_n);
    saved_out = malloc(saved_out_n);
    if (!saved_in || !saved_out) {
        free(saved_in);
        free(saved_out);
        saved_in = saved_out = NULL;
        return -1;
    }
    memcpy(saved_in, sc__in_buf, saved_in_n);
    memcpy(saved_out, sc__out_buf, saved_out_n);
    return 0;
}

static void batch_restore(void)
{
    if (!saved_in)
        return;
    memcpy(sc__in_buf, saved_in, saved_in_n);
    memcpy(sc__out_buf, saved_out, saved_out_n);
    free(saved_in);
    free(saved_out);
    saved_in = saved_out = NULL;
}

static void batch_fail(const char *what)
{
    batch_active = 0;
    sc__copies_free();
    sc__write_errorf(-1, "malformed batch call: %s", what);
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

    if (sc__rd_scalar(r, MP_UINT) || mp_decode_uint(&r->p) != SC_BATCH_CALL || sc__rd_scalar(r, MP_STR)) {
        sc__write_errorf(-1, "malformed call: expected [name, [args]] or [1, name, [[args], ...]]");
        return;
    }
    const char *name = mp_decode_str(&r->p, &nlen);
    const struct sc_func *f = find_func(name, nlen);
    if (!f) {
        uint32_t shown = (uint32_t)sc__utf8_cut(name, nlen, SC_MAX_NAME);
        sc__write_errorf(-1, "unknown function '%.*s'", (int)shown, name);
        return;
    }
    if (sc__rd_array(r, &count)) {
        sc__write_errorf(-1, "malformed batch call of '%s': items are not an array", f->name);
        return;
    }
    if (!sc__out_fits(SC_BATCH_HEAD)) {
        sc__write_errorf(-1, "output buffer too small for a batch");
        return;
    }
    batch_active = 1;
    batch_w = batch_items();
    batch_n = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (sc__rd_array(r, &cnt) || cnt != (uint32_t)f->nparams) {
            batch_fail("an item is not an argument array of the function's arity");
            return;
        }
        for (int k = 0; k < f->nparams; k++) {
            int rc = sc__decode_value(r, f->params[k], &args[k], why, sizeof why);
            if (rc) {
                batch_fail(rc == -2 ? "out of guest memory copying an argument" : why);
                return;
            }
        }
        args[f->nparams] = sc_void();
        sc_value res = f->fn(args);
        flush_stdio();
        batch_put_result(f, &res);
        sc__copies_free();
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
    sc__format_msg(host_err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *sc_host_error(void) { return host_err; }

static int read_host_reply(const char *name, sc_type ret, sc_value *result);

/* A host-call argument: integers in their fixed-width forms (int32, uint32, int64, uint64;
 * f32, f64 and bool have one size already), so that the request of a function with only
 * such parameters has one layout the host can read in place (docs/guest-abi.md, "Host
 * calls"); strings and bytes as sc__value_encode. */
static uint64_t host_arg_size(const sc_value *v)
{
    switch (v->type) {
    case SC_I32: case SC_U32: return 5;
    case SC_I64: case SC_U64: return 9;
    default: return sc__value_size(v);
    }
}

static char *host_arg_encode(char *w, const sc_value *v)
{
    switch (v->type) {
    case SC_I32: w = mp_store_u8(w, 0xd2); return mp_store_u32(w, (uint32_t)v->i32);
    case SC_U32: w = mp_store_u8(w, 0xce); return mp_store_u32(w, v->u32);
    case SC_I64: w = mp_store_u8(w, 0xd3); return mp_store_u64(w, (uint64_t)v->i64);
    case SC_U64: w = mp_store_u8(w, 0xcf); return mp_store_u64(w, v->u64);
    default: return sc__value_encode(w, v);
    }
}

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
    if (!sc__type_valid(ret))
        return host_fail("sc_call_host(\"%s\"): invalid return type %d", name, (int)ret);
    if (nargs < 0 || nargs > SC_MAX_PARAMS)
        return host_fail("sc_call_host(\"%s\"): %d arguments (0..%d allowed)", name, nargs, SC_MAX_PARAMS);
    va_list ap;
    va_start(ap, nargs);
    for (int i = 0; i < nargs; i++)
        a[i] = va_arg(ap, sc_value);
    va_end(ap);

    uint64_t total = mp_sizeof_array(3) + sc__sizeof_str(nlen) + mp_sizeof_array((uint32_t)nargs) +
                     sc__sizeof_str(strlen(sc__type_names[ret]));
    for (int i = 0; i < nargs; i++) {
        const char *problem = sc__value_problem(&a[i]);
        if (!problem && a[i].type == SC_VOID)
            problem = "void is not an argument type";
        if (!problem && a[i].is_error)
            problem = "an sc_error value is not an argument";
        if (problem)
            return host_fail("sc_call_host(\"%s\"): argument %d: %s", name, i, problem);
        total += host_arg_size(&a[i]);
    }
    if (!sc__out_fits(total))
        return host_fail("host call request too large (%llu bytes > output buffer)",
                         (unsigned long long)(total + SC_FRAME_HEADER));

    flush_stdio();
    if (batch_save())
        return host_fail("out of guest memory saving the batch around host call '%s'", name);
    char *w = sc__out_payload();
    w = mp_encode_array(w, 3);
    w = mp_encode_str(w, name, (uint32_t)nlen);
    w = mp_encode_array(w, (uint32_t)nargs);
    for (int i = 0; i < nargs; i++)
        w = host_arg_encode(w, &a[i]);
    w = mp_encode_str(w, sc__type_names[ret], (uint32_t)strlen(sc__type_names[ret]));
    sc__out_commit(w);

    sc_port_out(SC_OUT_HOSTCALL);
    int rc = read_host_reply(name, ret, result);
    batch_restore();
    return rc;
}

/* The host-call reply in the input buffer: [0, value] or [1, message]. */
static int read_host_reply(const char *name, sc_type ret, sc_value *result)
{
    char why[192];
    uint32_t n = sc__load_len(sc__in_buf), cnt;
    if (n > sc__in_size - SC_FRAME_HEADER)
        return host_fail("malformed host-call reply from '%s': length %u exceeds the input buffer", name, n);
    sc_rd r = {sc__in_buf + SC_FRAME_HEADER, sc__in_buf + SC_FRAME_HEADER + n};
    if (sc__rd_array(&r, &cnt) || cnt != 2 || sc__rd_scalar(&r, MP_UINT))
        return host_fail("malformed host-call reply from '%s'", name);
    uint64_t status = mp_decode_uint(&r.p);
    if (status == 1) {
        uint32_t mlen;
        if (sc__rd_scalar(&r, MP_STR))
            return host_fail("malformed host-call error reply from '%s'", name);
        const char *m = mp_decode_str(&r.p, &mlen);
        size_t keep = sc__utf8_cut(m, mlen, SC_MSG_MAX);
        memcpy(host_err, m, keep);
        host_err[keep] = '\0';
        return -1;
    }
    if (status != 0)
        return host_fail("malformed host-call reply from '%s': status %llu", name, (unsigned long long)status);
    sc_value v;
    int rc = sc__decode_value(&r, ret, &v, why, sizeof why);
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
        sc__out_buf = (char *)(uintptr_t)oa;
        sc__out_size = os;
        sc__out_ok = 1;
    }
    uint64_t version = abi->version;
    if (version != SC_ABI_VERSION)
        sc_abort(SC_SDK_ABORT, "ABI version mismatch: host %llu, guest SDK %d", (unsigned long long)version,
                 SC_ABI_VERSION);
    if (!sc__out_ok)
        sc_abort(SC_SDK_ABORT, "bad output buffer in the ABI page");
    if (!buffer_ok(ia, is))
        sc_abort(SC_SDK_ABORT, "bad input buffer in the ABI page (%#llx, %llu bytes)", (unsigned long long)ia,
                 (unsigned long long)is);
    sc__in_buf = (char *)(uintptr_t)ia;
    sc__in_size = is;

    snapcell_main();
    init_done = 1;
    flush_stdio();
    sc__copies_free(); /* results of host calls made during init */
    write_table();
    for (;;) {
        sc_port_out(SC_OUT_RETURN);
        handle_call();
    }
}
