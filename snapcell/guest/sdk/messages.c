/*
 * snapcell guest SDK runtime: messages (docs/guest-abi.md, "Buffers and messages").
 *
 * Values (sc_i32() ... sc_error()), their MessagePack encoding, bounded reading of what the
 * host sends (calls, host-call replies), the result and error messages of a call, aborts, and
 * the per-call copies of str/bytes arguments. The buffers and state these use are defined in
 * dispatch.c (sc_internal.h).
 */
#define _GNU_SOURCE 1
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_SOURCE 1 /* msgpuck's out-of-line definitions live in this file */
#include "sc_internal.h"

union sc_copy {
    union sc_copy *next;
    max_align_t align;
};

static char abort_msg[SC_MSG_BUF];          /* sc_abort() */

/* ---- per-call copies ---------------------------------------------------------------------- */

/* A runtime-owned, NUL-terminated copy of len bytes, freed by sc__copies_free(); NULL if the
 * heap is exhausted. */
static char *copy_alloc(const char *src, uint32_t len)
{
    union sc_copy *c = malloc(sizeof(union sc_copy) + (size_t)len + 1);
    if (!c)
        return NULL;
    c->next = sc__copies;
    sc__copies = c;
    char *p = (char *)(c + 1);
    if (len)
        memcpy(p, src, len);
    p[len] = '\0';
    return p;
}

void sc__copies_free(void)
{
    while (sc__copies) {
        union sc_copy *next = sc__copies->next;
        free(sc__copies);
        sc__copies = next;
    }
}

/* ---- small helpers ------------------------------------------------------------------------ */

const char *const sc__type_names[] = {
    [SC_VOID] = "void", [SC_I32] = "i32", [SC_U32] = "u32", [SC_I64] = "i64", [SC_U64] = "u64",
    [SC_F32] = "f32", [SC_F64] = "f64", [SC_STR] = "str", [SC_BOOL] = "bool", [SC_BYTES] = "bytes",
};

const char *sc_type_name(sc_type t) { return sc__type_valid(t) ? sc__type_names[t] : "?"; }

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

/* printf into buf (SC_MSG_BUF bytes); returns the length, capped at SC_MSG_MAX at a UTF-8
 * boundary, and NUL-terminates there. */
uint32_t sc__format_msg(char *buf, const char *fmt, va_list ap)
{
    int r = vsnprintf(buf, SC_MSG_BUF, fmt ? fmt : "", ap);
    if (r < 0) {
        strcpy(buf, "(message format error)");
        r = (int)strlen(buf);
    }
    size_t len = (size_t)r < SC_MSG_BUF - 1 ? (size_t)r : SC_MSG_BUF - 1;
    len = sc__utf8_cut(buf, len, SC_MSG_MAX);
    buf[len] = '\0';
    return (uint32_t)len;
}

static uint64_t sizeof_bin(uint64_t len) { return mp_sizeof_binl((uint32_t)len) + len; }

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
    uint32_t n = sc__format_msg(sc__err_msg, fmt, ap);
    va_end(ap);
    v.type = SC_STR;
    v.str.ptr = sc__err_msg;
    v.str.len = n;
    v.is_error = 1;
    v.err_code = code;
    return v;
}

/* NULL when v is a well-formed value (valid type, no NULL pointer with a length); else why not. */
const char *sc__value_problem(const sc_value *v)
{
    if (!sc__type_valid(v->type))
        return "invalid sc_type";
    if (v->type == SC_STR && !v->str.ptr && v->str.len)
        return "str with a NULL pointer";
    if (v->type == SC_BYTES && !v->bytes.ptr && v->bytes.len)
        return "bytes with a NULL pointer";
    return NULL;
}

uint64_t sc__value_size(const sc_value *v)
{
    switch (v->type) {
    case SC_VOID: return mp_sizeof_nil();
    case SC_I32: return sc__sizeof_sint(v->i32);
    case SC_U32: return mp_sizeof_uint(v->u32);
    case SC_I64: return sc__sizeof_sint(v->i64);
    case SC_U64: return mp_sizeof_uint(v->u64);
    case SC_F32: return mp_sizeof_float(v->f32);
    case SC_F64: return mp_sizeof_double(v->f64);
    case SC_STR: return sc__sizeof_str(v->str.len);
    case SC_BOOL: return mp_sizeof_bool(v->b);
    case SC_BYTES: return sizeof_bin(v->bytes.len);
    }
    return 0;
}

char *sc__value_encode(char *w, const sc_value *v)
{
    switch (v->type) {
    case SC_VOID: return mp_encode_nil(w);
    case SC_I32: return sc__encode_sint(w, v->i32);
    case SC_U32: return mp_encode_uint(w, v->u32);
    case SC_I64: return sc__encode_sint(w, v->i64);
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

int sc__rd_array(sc_rd *r, uint32_t *count)
{
    if (r->p >= r->end || mp_typeof(*r->p) != MP_ARRAY || mp_check_array(r->p, r->end) > 0)
        return -1;
    *count = mp_decode_array(&r->p);
    return 0;
}

/* The next element exists, is of type t (not a container) and lies entirely inside. */
int sc__rd_scalar(const sc_rd *r, enum mp_type t)
{
    const char *q = r->p;
    return r->p < r->end && mp_typeof(*r->p) == t && mp_check(&q, r->end) == 0 ? 0 : -1;
}

/* Decode the next element as a value of type `want` into *out (str/bytes as runtime-owned
 * copies). 0: ok; -1: wrong type, out of range or malformed (why[] says which); -2: out of
 * memory. */
int sc__decode_value(sc_rd *r, sc_type want, sc_value *out, char *why, size_t whysz)
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
    if (sc__rd_scalar(r, t)) {
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
    uint64_t head = 1 + sc__sizeof_sint(code);
    if (!sc__out_fits(head + mp_sizeof_strl(0)))
        return;
    uint64_t room = sc__out_size - SC_FRAME_HEADER - head;
    while (len && sc__sizeof_str(len) > room)  /* shrink to fit a tiny output buffer */
        len = (uint32_t)sc__utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    char *w = sc__out_payload();
    w = mp_encode_array(w, 2);
    w = sc__encode_sint(w, code);
    w = mp_encode_str(w, msg, len);
    sc__out_commit(w);
}

void sc_abort(int32_t code, const char *fmt, ...)
{
    static int aborting;
    va_list ap;
    va_start(ap, fmt);
    uint32_t len = sc__format_msg(abort_msg, fmt, ap);
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

/* ---- results ------------------------------------------------------------------------------ */

/* [1, code, message]: cut the message to fit the output buffer if need be. */
static void write_error(int32_t code, const char *msg, uint32_t len)
{
    uint64_t head = 1 + 1 + sc__sizeof_sint(code);
    if (!sc__out_fits(head + mp_sizeof_strl(0))) {
        if (sc__out_fits(0))
            sc__out_commit(sc__out_payload()); /* cannot even say why: an empty (malformed) message */
        return;
    }
    uint64_t room = sc__out_size - SC_FRAME_HEADER - head;
    if (!msg)
        len = 0;
    while (len && sc__sizeof_str(len) > room)
        len = (uint32_t)sc__utf8_cut(msg, len, len > 8 ? len - 8 : 0);
    char *w = sc__out_payload();
    w = mp_encode_array(w, 3);
    w = mp_encode_uint(w, 1);
    w = sc__encode_sint(w, code);
    w = mp_encode_str(w, msg ? msg : "", len);
    sc__out_commit(w);
}

void sc__write_errorf(int32_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = sc__format_msg(sc__err_msg, fmt, ap);
    va_end(ap);
    write_error(code, sc__err_msg, n);
}

const char *sc__result_problem(const struct sc_func *f, const sc_value *res, char *why,
                               size_t whysz)
{
    const char *problem = sc__value_problem(res);
    if (problem) {
        snprintf(why, whysz, "function '%s' returned an invalid value: %s", f->name, problem);
        return why;
    }
    if (res->type != f->ret) {
        snprintf(why, whysz, "function '%s' returned %s, but is declared to return %s", f->name,
                 sc_type_name(res->type), sc_type_name(f->ret));
        return why;
    }
    return NULL;
}

void sc__write_result(const struct sc_func *f, const sc_value *res)
{
    if (res->is_error) {
        const char *msg = res->str.ptr ? res->str.ptr : "";
        uint32_t len = res->str.ptr ? res->str.len : 0;
        write_error(res->err_code, msg, len);
        return;
    }
    char why[SC_MAX_NAME + 160];
    if (sc__result_problem(f, res, why, sizeof why)) {
        sc__write_errorf(-1, "%s", why);
        return;
    }
    uint64_t total = 1 + 1 + sc__value_size(res);
    if (!sc__out_fits(total)) {
        sc__write_errorf(-1, "result too large (%llu bytes > output buffer)",
                     (unsigned long long)(total + SC_FRAME_HEADER));
        return;
    }
    char *w = sc__out_payload();
    w = mp_encode_array(w, 2);
    w = mp_encode_uint(w, 0);
    w = sc__value_encode(w, res);
    sc__out_commit(w);
}
