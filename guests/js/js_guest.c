/*
 * js_guest: QuickJS-ng as a snapcell guest. snapcell_main() creates one runtime and context
 * (the warm state the host snapshots); `Run` evaluates a script in it (see
 * guests/common/codebox.h for the request and response). Each run normally starts from the
 * snapshot, so nothing a script does survives it unless the host keeps the state.
 *
 * Built-ins: the ECMAScript standard library, console.log/info/debug (stdout) and
 * console.warn/error (stderr), captured with a per-run cap, tools as global functions, and a
 * Math.random reseeded on every new sandbox. There is no file or process API.
 * guests/js/prelude.js (embedded as build/js/prelude.h) adds the web APIs agents expect
 * (timers, TextEncoder/TextDecoder, atob/btoa, URL, structuredClone, crypto, console.table,
 * fetch: a request the host makes under the sandbox's network policy); the Intl bundle
 * (guests/js/intl/) adds Intl and the toLocale* methods; the event loop below drives the
 * prelude's timers.
 */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "cbstream.h"
#include "codebox.h"
#include "quickjs.h"
#include "snapcell.h"
#include "prelude.h"                   /* js_prelude[]: guests/js/prelude.js */

/* the Intl bundle (guests/js/intl/, linked from build/js/intl.S), NUL-terminated */
extern const char js_intl[], js_intl_end[];

#define JS_STACK_LIMIT (1024 * 1024)  /* JS stack (the guest's is larger: see snapcell/code) */
#define BASE_MEMORY_LIMIT ((size_t)64 << 20)

static JSRuntime *rt;
static size_t warm_heap;               /* heap of the warm state (Intl data, prelude): not the run's */
static JSContext *ctx;
static cb_buf scratch[CB_MAX_DEPTH + 1];     /* tool-argument encoding per nesting depth */
static int tool_depth;

/* ---- the runtime's memory ------------------------------------------------------------------
 * QuickJS carves blocks of up to 512 bytes out of 4 KiB arenas (one per size class at a time)
 * it takes from musl's malloc, and takes larger blocks from it directly. After the warm-up a
 * run's small blocks come from arenas made after it (seal_warm_heap): adjacent, instead of the
 * free slots scattered over the warm heap (tens of MiB with the Intl data), so a run dirties
 * fewer pages and the restore after it copies fewer back. (mimalloc, as the Lua and Python
 * guests use it, gave the same pages but its 32 MiB segments took the address space a 64 MiB
 * typed array needs; musl's malloc makes no system call in a JS run.) */
static unsigned long backing_mallocs;     /* calls of j_malloc: arena refills among them */

static void *j_malloc(void *opaque, size_t n)
{
    (void)opaque;
    backing_mallocs++;
    return malloc(n);
}

static void *j_calloc(void *opaque, size_t k, size_t n) { (void)opaque; return calloc(k, n); }
static void j_free(void *opaque, void *p) { (void)opaque; free(p); }
static void *j_realloc(void *opaque, void *p, size_t n) { (void)opaque; return realloc(p, n); }
static size_t j_usable(const void *p) { return malloc_usable_size((void *)p); }

static const JSMallocFunctions j_malloc_functions = {j_calloc, j_malloc, j_free, j_realloc, j_usable};

/* QuickJS's arena block sizes (quickjs.c, arena_block_sizes) and its block header's size */
static const uint16_t arena_block_sizes[] = {
    16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128,
    144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512,
};
#define ARENA_BLOCK_HEADER 8

/* Fill every free slot the warm state's QuickJS arenas hold (the filler blocks are never
 * freed), then keep one block of every size class in a new arena, so that a run's small blocks
 * come from arenas made after the warm-up, adjacent and never freed or re-made by a run (a new
 * or an emptied arena writes the pages of its neighbours in QuickJS's lists). The warm state's
 * blocks stay where they are and are freed into their own arenas; the filler holds what was
 * free in them (the warm heap's fragmentation) for good. */
static void seal_warm_heap(void)
{
    enum { CLASSES = sizeof arena_block_sizes / sizeof arena_block_sizes[0] };
    for (size_t i = 0; i < CLASSES; i++) {
        size_t want = arena_block_sizes[i] - ARENA_BLOCK_HEADER;
        for (;;) {
            unsigned long before = backing_mallocs;
            void *p = js_malloc_rt(rt, want);
            if (!p)
                sc_abort(1, "out of memory sealing the warm JS heap");
            if (backing_mallocs != before) {      /* a new arena: every older one is full */
                js_free_rt(rt, p);
                break;
            }
        }
    }
    for (size_t i = 0; i < CLASSES; i++)
        if (!js_malloc_rt(rt, arena_block_sizes[i] - ARENA_BLOCK_HEADER))
            sc_abort(1, "out of memory sealing the warm JS heap");
}

/* ---- JS value -> MessagePack -------------------------------------------------------------- */

static int encode_value(cb_buf *b, JSValueConst v, int depth);

static int encode_throw(const char *fmt, const char *what)
{
    JS_ThrowTypeError(ctx, fmt, what);
    return -1;
}

static int encode_object(cb_buf *b, JSValueConst v, int depth)
{
    size_t blen;
    uint8_t *bytes;
    if ((bytes = JS_GetUint8Array(ctx, &blen, v)) != NULL) {
        cb_bin(b, (const char *)bytes, blen);
        return 0;
    }
    JS_FreeValue(ctx, JS_GetException(ctx));     /* not a Uint8Array */
    if (JS_IsArrayBuffer(v) && (bytes = JS_GetArrayBuffer(ctx, &blen, v)) != NULL) {
        cb_bin(b, (const char *)bytes, blen);
        return 0;
    }
    if (JS_IsFunction(ctx, v))
        return encode_throw("a %s cannot be passed to the host", "function");
    if (JS_IsArray(v)) {
        int64_t n;
        if (JS_GetLength(ctx, v, &n))
            return -1;
        if (n > UINT32_MAX)
            return encode_throw("%s too long to pass to the host", "array");
        cb_array(b, (uint32_t)n);
        for (int64_t i = 0; i < n; i++) {
            JSValue e = JS_GetPropertyInt64(ctx, v, i);
            if (JS_IsException(e))
                return -1;
            int rc = encode_value(b, e, depth + 1);
            JS_FreeValue(ctx, e);
            if (rc)
                return -1;
        }
        return 0;
    }
    if (JS_IsDate(v)) {
        JSValue s = JS_ToString(ctx, v);
        if (JS_IsException(s))
            return -1;
        int rc = encode_value(b, s, depth + 1);
        JS_FreeValue(ctx, s);
        return rc;
    }
    JSPropertyEnum *tab;
    uint32_t len;
    if (JS_GetOwnPropertyNames(ctx, &tab, &len, v, JS_GPN_STRING_MASK | JS_GPN_ENUM_ONLY))
        return -1;
    cb_map(b, len);
    int rc = 0;
    for (uint32_t i = 0; i < len && !rc; i++) {
        size_t kl;
        const char *k = JS_AtomToCStringLen(ctx, &kl, tab[i].atom);
        if (!k) {
            rc = -1;
            break;
        }
        cb_str(b, k, kl);
        JS_FreeCString(ctx, k);
        JSValue e = JS_GetProperty(ctx, v, tab[i].atom);
        if (JS_IsException(e)) {
            rc = -1;
            break;
        }
        rc = encode_value(b, e, depth + 1);
        JS_FreeValue(ctx, e);
    }
    JS_FreePropertyEnum(ctx, tab, len);
    return rc;
}

static int encode_value(cb_buf *b, JSValueConst v, int depth)
{
    if (depth > CB_MAX_DEPTH)
        return encode_throw("value nested more than 64 levels deep (or %s)", "cyclic");
    if (b->oom) {
        JS_ThrowOutOfMemory(ctx);
        return -1;
    }
    int tag = JS_VALUE_GET_NORM_TAG(v);
    switch (tag) {
    case JS_TAG_UNDEFINED:
    case JS_TAG_NULL:
    case JS_TAG_UNINITIALIZED:
        cb_nil(b);
        return 0;
    case JS_TAG_BOOL:
        cb_bool(b, JS_VALUE_GET_BOOL(v));
        return 0;
    case JS_TAG_INT:
        cb_int(b, JS_VALUE_GET_INT(v));
        return 0;
    case JS_TAG_FLOAT64: {
        double d = JS_VALUE_GET_FLOAT64(v);
        if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0 && !(d == 0 && signbit(d)))
            cb_int(b, (int64_t)d);
        else
            cb_double(b, d);
        return 0;
    }
    case JS_TAG_BIG_INT:
    case JS_TAG_SHORT_BIG_INT: {
        int64_t x;
        if (JS_ToBigInt64(ctx, &x, v))
            return -1;
        JSValue back = JS_NewBigInt64(ctx, x);      /* ToBigInt64 wraps: check the range */
        bool same = JS_IsStrictEqual(ctx, back, v);
        JS_FreeValue(ctx, back);
        if (!same)
            return encode_throw("a BigInt outside the %s range cannot be passed to the host", "int64");
        cb_int(b, x);
        return 0;
    }
    case JS_TAG_STRING:
    case JS_TAG_STRING_ROPE: {
        size_t n;
        const char *s = JS_ToCStringLen(ctx, &n, v);
        if (!s)
            return -1;
        cb_str(b, s, n);
        JS_FreeCString(ctx, s);
        return 0;
    }
    case JS_TAG_SYMBOL:
        return encode_throw("a %s cannot be passed to the host", "symbol");
    case JS_TAG_OBJECT:
        return encode_object(b, v, depth);
    default:
        return encode_throw("a value of this type (%s) cannot be passed to the host", "internal");
    }
}

/* ---- MessagePack -> JS value -------------------------------------------------------------- */

static JSValue decode_value(const char **r, int depth)
{
    if (depth > CB_MAX_DEPTH + 1)
        return JS_ThrowTypeError(ctx, "value from the host nested too deeply");
    uint32_t n;
    const char *s;
    switch (mp_typeof(**r)) {
    case MP_NIL:
        mp_decode_nil(r);
        return JS_NULL;
    case MP_BOOL:
        return JS_NewBool(ctx, mp_decode_bool(r));
    case MP_UINT: {
        uint64_t u = mp_decode_uint(r);
        return u <= INT32_MAX ? JS_NewInt32(ctx, (int32_t)u) : JS_NewFloat64(ctx, (double)u);
    }
    case MP_INT: {
        int64_t i = mp_decode_int(r);
        return i >= INT32_MIN ? JS_NewInt32(ctx, (int32_t)i) : JS_NewFloat64(ctx, (double)i);
    }
    case MP_FLOAT:
        return JS_NewFloat64(ctx, mp_decode_float(r));
    case MP_DOUBLE:
        return JS_NewFloat64(ctx, mp_decode_double(r));
    case MP_STR:
        s = mp_decode_str(r, &n);
        return JS_NewStringLen(ctx, s, n);
    case MP_BIN:
        s = mp_decode_bin(r, &n);
        return JS_NewUint8ArrayCopy(ctx, (const uint8_t *)s, n);
    case MP_ARRAY: {
        n = mp_decode_array(r);
        JSValue a = JS_NewArray(ctx);
        for (uint32_t i = 0; i < n; i++) {
            if (JS_IsException(a)) {
                mp_next(r);
                continue;
            }
            JSValue e = decode_value(r, depth + 1);
            if (JS_IsException(e) || JS_SetPropertyUint32(ctx, a, i, e) < 0) {
                JS_FreeValue(ctx, a);
                a = JS_EXCEPTION;
            }
        }
        return a;
    }
    case MP_MAP: {
        n = mp_decode_map(r);
        JSValue o = JS_NewObject(ctx);
        for (uint32_t i = 0; i < n; i++) {
            if (JS_IsException(o)) {
                mp_next(r);
                mp_next(r);
                continue;
            }
            JSValue k = decode_value(r, depth + 1);
            JSValue e = JS_IsException(k) ? JS_EXCEPTION : decode_value(r, depth + 1);
            if (JS_IsException(k))
                mp_next(r);
            JSAtom atom = JS_IsException(k) ? JS_ATOM_NULL : JS_ValueToAtom(ctx, k);
            JS_FreeValue(ctx, k);
            if (atom == JS_ATOM_NULL || JS_IsException(e) ||
                JS_DefinePropertyValue(ctx, o, atom, e, JS_PROP_C_W_E) < 0) {
                if (atom == JS_ATOM_NULL)
                    JS_FreeValue(ctx, e);
                JS_FreeValue(ctx, o);
                o = JS_EXCEPTION;
            }
            if (atom != JS_ATOM_NULL)
                JS_FreeAtom(ctx, atom);
        }
        return o;
    }
    default:
        mp_next(r);
        return JS_ThrowTypeError(ctx, "unsupported value from the host");
    }
}

/* ---- built-ins ---------------------------------------------------------------------------- */

static JSValue js_console(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    (void)this_val;
    for (int i = 0; i < argc; i++) {
        size_t n;
        const char *s = JS_ToCStringLen(c, &n, argv[i]);
        if (!s)
            return JS_EXCEPTION;
        int rc = (i ? cbs_write(magic, " ", 1) : 0) || cbs_write(magic, s, n);
        JS_FreeCString(c, s);
        if (rc)
            goto over;
    }
    if (cbs_write(magic, "\n", 1))
        goto over;
    return JS_UNDEFINED;
over: {
        JSValue e = JS_NewError(c);
        JS_DefinePropertyValueStr(c, e, "name", JS_NewString(c, "OutputLimitError"), JS_PROP_C_W_E);
        JS_DefinePropertyValueStr(c, e, "message", JS_NewString(c, "output limit exceeded"),
                                  JS_PROP_C_W_E);
        return JS_Throw(c, e);
    }
}

static JSValue js_random(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val, (void)argc, (void)argv;
    return JS_NewFloat64(c, cb_rng_double());
}

static JSValue js_tool(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv, int magic,
                       JSValueConst *data)
{
    (void)this_val, (void)magic;
    if (tool_depth >= CB_MAX_DEPTH)
        return JS_ThrowInternalError(c, "tool calls nested too deeply");
    cb_buf *args = &scratch[tool_depth];
    cb_reset(args);
    cb_array(args, (uint32_t)argc);
    for (int i = 0; i < argc; i++)
        if (encode_value(args, argv[i], 1))
            return JS_EXCEPTION;
    size_t nl;
    const char *name = JS_ToCStringLen(c, &nl, data[0]);
    if (!name)
        return JS_EXCEPTION;
    const char *v, *vend, *et, *em;
    tool_depth++;
    int rc = cb_call_tool(name, nl, args, &v, &vend, &et, &em);
    tool_depth--;
    if (rc) {
        JSValue e = JS_NewError(c);
        JS_DefinePropertyValueStr(c, e, "name", JS_NewString(c, et), JS_PROP_C_W_E);
        char msg[4400];
        snprintf(msg, sizeof msg, "%s: %s", name, em);
        JS_FreeCString(c, name);
        JS_DefinePropertyValueStr(c, e, "message", JS_NewString(c, msg), JS_PROP_C_W_E);
        return JS_Throw(c, e);
    }
    JS_FreeCString(c, name);
    return decode_value(&v, 0);
}

/* ---- errors ------------------------------------------------------------------------------- */

static cb_buf err_type, err_msg, err_stack;

static void prop_string(JSValueConst obj, const char *prop, cb_buf *out)
{
    cb_reset(out);
    JSValue p = JS_GetPropertyStr(ctx, obj, prop);
    if (!JS_IsException(p) && !JS_IsUndefined(p) && !JS_IsNull(p)) {
        size_t n;
        const char *s = JS_ToCStringLen(ctx, &n, p);
        if (s) {
            cb_append(out, s, n);
            JS_FreeCString(ctx, s);
        }
    }
    JS_FreeValue(ctx, JS_IsException(p) ? JS_GetException(ctx) : p);
}

/* Finish the response with the pending exception. */
static void respond_exception(const char *filename)
{
    JSValue ex = JS_GetException(ctx);
    cb_reset(&err_type);
    cb_reset(&err_msg);
    cb_reset(&err_stack);
    if (JS_IsError(ex)) {
        prop_string(ex, "name", &err_type);
        prop_string(ex, "message", &err_msg);
        prop_string(ex, "stack", &err_stack);
    } else if (JS_IsNull(ex) || JS_IsUninitialized(ex)) {
        cb_append(&err_type, "InternalError", 13);    /* e.g. out of memory, nothing thrown */
        cb_append(&err_msg, "out of memory", 13);
    } else {
        cb_append(&err_type, "Error", 5);
        cb_append(&err_msg, "uncaught ", 9);
        size_t n;
        const char *s = JS_ToCStringLen(ctx, &n, ex);
        if (s) {
            cb_append(&err_msg, s, n);
            JS_FreeCString(ctx, s);
        } else {
            JS_FreeValue(ctx, JS_GetException(ctx));
            cb_append(&err_msg, "exception", 9);
        }
    }
    JS_FreeValue(ctx, ex);
    if (err_type.len == 0)
        cb_append(&err_type, "Error", 5);
    cb_append(&err_type, "", 1);      /* NUL */
    int64_t line = cb_find_line(err_stack.p, err_stack.len, filename);
    if (!line)
        line = cb_find_line(err_msg.p, err_msg.len, filename);
    cb_buf *r = cb_response_begin(1);
    cb_nil(r);
    cb_response_finish(err_type.oom ? "InternalError" : err_type.p, err_msg.p, err_msg.len,
                       err_stack.p, err_stack.len, line);
}

/* ---- Run ---------------------------------------------------------------------------------- */

static cb_buf code_buf;

static sc_value respond(void)
{
    cbs_end();
    cb_buf *r = cb_response();
    if (r->oom)
        return sc_error(2, "out of guest memory encoding the response");
    if (r->len > UINT32_MAX)
        return sc_error(2, "response too large");
    return sc_bytes(r->p, (uint32_t)r->len);
}

/* ---- the event loop (timers of guests/js/prelude.js) ------------------------------------- */

static JSValue timer_control, timer_fire;      /* the prelude's control object, its fire() */

/* Run pending jobs (promise reactions); the first failing job's exception wins. */
static JSValue run_jobs(JSValue v)
{
    for (;;) {
        JSContext *c2;
        int rc = JS_ExecutePendingJob(rt, &c2);
        if (rc == 0)
            break;
        if (rc < 0) {
            if (JS_IsException(v))
                JS_FreeValue(ctx, JS_GetException(ctx));   /* keep the first */
            else {
                JS_FreeValue(ctx, v);
                v = JS_EXCEPTION;
            }
            break;
        }
    }
    return v;
}

static JSAtom count_atom;               /* "count", held: a run does not look it up again */

static int timers_pending(void)
{
    int32_t n = 0;
    JSValue c = JS_GetProperty(ctx, timer_control, count_atom);
    if (JS_ToInt32(ctx, &n, c))
        JS_FreeValue(ctx, JS_GetException(ctx));
    JS_FreeValue(ctx, c);
    return n > 0;
}

/* Wait ms on the host's clock (the SDK's nanosleep polls it: the run's time limit applies). */
static void wait_ms(double ms)
{
    if (!(ms > 0))
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(fmod(ms, 1000) * 1e6)};
    nanosleep(&ts, NULL);
}

/* Jobs, then timers in due order, until neither is left; then the value, promises settled. An
 * exception thrown by a job or a timer callback ends the loop and is the run's error. */
static JSValue settle(JSValue v)
{
    for (;;) {
        v = run_jobs(v);
        if (JS_IsException(v) || !timers_pending())
            break;
        JSValue r = JS_Call(ctx, timer_fire, timer_control, 0, NULL);
        if (JS_IsException(r)) {
            JS_FreeValue(ctx, v);
            return JS_EXCEPTION;
        }
        double wait = 0;
        JS_ToFloat64(ctx, &wait, r);
        JS_FreeValue(ctx, r);
        wait_ms(wait);
    }
    if (!JS_IsException(v) && JS_IsPromise(v)) {
        JSPromiseStateEnum st = JS_PromiseState(ctx, v);
        JSValue res = JS_PromiseResult(ctx, v);
        JS_FreeValue(ctx, v);
        if (st == JS_PROMISE_REJECTED) {
            JS_Throw(ctx, res);
            v = JS_EXCEPTION;
        } else if (st == JS_PROMISE_PENDING) {
            JS_FreeValue(ctx, res);
            v = JS_ThrowInternalError(ctx, "the script's promise never settled (no timer or job "
                                      "is left that could settle it)");
        } else {
            v = res;
        }
    }
    return v;
}

/* A script with top-level await is evaluated as an async function: its promise resolves to
 * {value: completion value}, whose own promise (if any) is settled in turn. */
static JSValue eval_script(const char *code, size_t len, const char *filename)
{
    int is_async = memmem(code, len, "await", 5) != NULL;
    JSValue v = JS_Eval(ctx, code, len, filename,
                        JS_EVAL_TYPE_GLOBAL | (is_async ? JS_EVAL_FLAG_ASYNC : 0));
    v = settle(v);
    if (is_async && !JS_IsException(v)) {
        JSValue inner = JS_GetPropertyStr(ctx, v, "value");
        JS_FreeValue(ctx, v);
        v = JS_IsException(inner) ? inner : settle(inner);
    }
    return v;
}

/* ---- the prelude's native helpers ----------------------------------------------------------- */

static JSValue js_now(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val, (void)argc, (void)argv;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return JS_NewFloat64(c, (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6);
}

/* randomBytes(n): an ArrayBuffer of n bytes from getrandom (the sandbox's entropy) */
static JSValue js_random_bytes(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val, (void)argc;
    uint32_t n;
    uint8_t buf[65536];
    if (JS_ToUint32(c, &n, argv[0]))
        return JS_EXCEPTION;
    if (n > sizeof buf)
        return JS_ThrowRangeError(c, "at most %u random bytes at once", (unsigned)sizeof buf);
    for (uint32_t got = 0; got < n;) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r <= 0)
            return JS_ThrowInternalError(c, "getrandom failed");
        got += (uint32_t)r;
    }
    return JS_NewArrayBufferCopy(c, buf, n);
}

static void install_intl(void)
{
    JSValue v = JS_Eval(ctx, js_intl, (size_t)(js_intl_end - js_intl), "<intl>", JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(v)) {
        JSValue e = JS_GetException(ctx);
        const char *m = JS_ToCString(ctx, e);
        sc_abort(1, "the JS Intl bundle failed: %s", m ? m : "?");
    }
    JS_FreeValue(ctx, v);
}

static void install_prelude(JSValueConst global)
{
    JSValue fn = JS_Eval(ctx, js_prelude, sizeof js_prelude - 1, "<prelude>", JS_EVAL_TYPE_GLOBAL);
    JSValue sc = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, sc, "now", JS_NewCFunction(ctx, js_now, "now", 0));
    JS_SetPropertyStr(ctx, sc, "randomBytes", JS_NewCFunction(ctx, js_random_bytes, "randomBytes", 1));
    JSValue net_fetch = JS_NewString(ctx, "net.fetch");       /* the host's fetch (egress/) */
    JS_SetPropertyStr(ctx, sc, "fetch", JS_NewCFunctionData(ctx, js_tool, 5, 0, 1, &net_fetch));
    JS_FreeValue(ctx, net_fetch);
    JSValue argv[2] = {JS_DupValue(ctx, global), sc};
    timer_control = JS_IsException(fn) ? JS_EXCEPTION : JS_Call(ctx, fn, JS_UNDEFINED, 2, argv);
    JS_FreeValue(ctx, argv[0]);
    JS_FreeValue(ctx, argv[1]);
    JS_FreeValue(ctx, fn);
    if (JS_IsException(timer_control)) {
        JSValue e = JS_GetException(ctx);
        const char *m = JS_ToCString(ctx, e);
        sc_abort(1, "the JS prelude failed: %s", m ? m : "?");
    }
    timer_fire = JS_GetPropertyStr(ctx, timer_control, "fire");
}

static void install_tools(const cb_request *req)
{
    if (req->ntools == 0)
        return;                 /* (the global object's reference count is a page written) */
    JSValue global = JS_GetGlobalObject(ctx);
    for (uint32_t i = 0; i < req->ntools; i++) {
        if (cbs_is_tool(req->tools[i], req->tool_lens[i]))
            continue;
        JSValue name = JS_NewStringLen(ctx, req->tools[i], req->tool_lens[i]);
        JSValue fn = JS_NewCFunctionData(ctx, js_tool, 0, 0, 1, &name);
        JS_FreeValue(ctx, name);
        JSAtom atom = JS_NewAtomLen(ctx, req->tools[i], req->tool_lens[i]);
        JS_DefinePropertyValue(ctx, global, atom, fn, JS_PROP_C_W_E);
        JS_FreeAtom(ctx, atom);
    }
    JS_FreeValue(ctx, global);
}

static sc_value Run(const sc_value *args)
{
    cb_request req;
    char why[160];
    if (cb_parse_request((const char *)args[0].bytes.ptr, args[0].bytes.len, &req, why, sizeof why))
        return sc_error(1, "bad Run request: %s", why);
    cb_reset(&code_buf);
    cb_append(&code_buf, req.code, req.code_len);
    cb_append(&code_buf, "", 1);
    if (code_buf.oom)
        return sc_error(2, "out of guest memory copying the code");
    cb_output_begin(req.max_output);
    cbs_begin(&req);
    JS_UpdateStackTop(rt);
    install_tools(&req);
    /* the limit counts the run's own allocations, beyond the warm state's */
    JS_SetMemoryLimit(rt, warm_heap + (req.memory_limit ? (size_t)req.memory_limit : BASE_MEMORY_LIMIT));
    JSValue v = eval_script(code_buf.p, code_buf.len - 1, req.filename);
    /* encoding the result and errors may need memory beyond the script's limit */
    JS_SetMemoryLimit(rt, (size_t)-1);
    if (JS_IsException(v)) {
        respond_exception(req.filename);
    } else {
        cb_buf *r = cb_response_begin(0);
        int rc = encode_value(r, v, 0);
        JS_FreeValue(ctx, v);
        if (rc)
            respond_exception(req.filename);
        else
            cb_response_finish(NULL, NULL, 0, NULL, 0, 0);
    }
    return respond();
}

/* ---- init --------------------------------------------------------------------------------- */

static const JSCFunctionListEntry console_funcs[] = {
    JS_CFUNC_MAGIC_DEF("log", 1, js_console, 1),
    JS_CFUNC_MAGIC_DEF("info", 1, js_console, 1),
    JS_CFUNC_MAGIC_DEF("debug", 1, js_console, 1),
    JS_CFUNC_MAGIC_DEF("warn", 1, js_console, 2),
    JS_CFUNC_MAGIC_DEF("error", 1, js_console, 2),
};

void snapcell_main(void)
{
    rt = JS_NewRuntime2(&j_malloc_functions, NULL);
    if (!rt)
        sc_abort(1, "JS_NewRuntime failed");
    JS_SetMaxStackSize(rt, JS_STACK_LIMIT);
    ctx = JS_NewContext(rt);
    if (!ctx)
        sc_abort(1, "JS_NewContext failed");
    cb_rng_init();
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue console = JS_NewObject(ctx);
    JS_SetPropertyFunctionList(ctx, console, console_funcs,
                               sizeof console_funcs / sizeof console_funcs[0]);
    JS_SetPropertyStr(ctx, global, "console", console);
    JSValue math = JS_GetPropertyStr(ctx, global, "Math");
    JS_SetPropertyStr(ctx, math, "random", JS_NewCFunction(ctx, js_random, "random", 0));
    JS_FreeValue(ctx, math);
    install_intl();
    install_prelude(global);
    JS_FreeValue(ctx, global);
    /* warm up: the first evaluation's one-time work lands in the snapshot */
    const char *warm = "JSON.stringify({a:[1,2,{b:'c'}]}); /x+/.test('xx'); [3,1,2].sort(); 'ab'.split('');";
    JS_FreeValue(ctx, JS_Eval(ctx, warm, strlen(warm), "<warmup>", JS_EVAL_TYPE_GLOBAL));
    /* room in the shape and atom hash tables (they double when full, rehashing every entry):
     * a run's few new shapes and atoms must not be the ones that make them grow */
    const char *room = "{const a = []; for (let i = 0; i < 4096; i++) a.push({['\\u0001' + i]: i});}";
    JS_FreeValue(ctx, JS_Eval(ctx, room, strlen(room), "<warmup>", JS_EVAL_TYPE_GLOBAL));
    JS_RunGC(rt);
    seal_warm_heap();
    /* held atoms a run would otherwise look up or make (a new atom writes the atom table):
     * the default file name's, made here so that it lies among the pages a run writes */
    JS_NewAtom(ctx, "main.js");
    count_atom = JS_NewAtom(ctx, "count");
    JS_FreeValue(ctx, JS_Eval(ctx, warm, strlen(warm), "<warmup>", JS_EVAL_TYPE_GLOBAL));
    JS_RunGC(rt);
    JSMemoryUsage mu;
    JS_ComputeMemoryUsage(rt, &mu);
    warm_heap = (size_t)mu.malloc_size;
    sc_register("Run", Run, SC_BYTES, 1, SC_BYTES);
}
