/* codebox: shared glue of the interpreter guests (see codebox.h). */
#include "codebox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "snapcell.h"
#include "snapcell_abi.h"

/* ---- buffers ------------------------------------------------------------------------------ */

void cb_reset(cb_buf *b)
{
    b->len = 0;
    b->oom = 0;
}

char *cb_room(cb_buf *b, size_t n)
{
    if (b->oom)
        return NULL;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n) {
            if (cap > ((size_t)1 << 40)) {
                b->oom = 1;
                return NULL;
            }
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return NULL;
        }
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->len;
}

void cb_append(cb_buf *b, const void *p, size_t n)
{
    char *w = cb_room(b, n);
    if (w) {
        if (n)
            memcpy(w, p, n);
        b->len += n;
    }
}

#define CB_PUT(b, size, expr)                                                                      \
    do {                                                                                           \
        char *w_ = cb_room((b), (size));                                                           \
        if (w_) {                                                                                  \
            char *e_ = expr;                                                                       \
            (b)->len += (size_t)(e_ - w_);                                                         \
        }                                                                                          \
    } while (0)

void cb_nil(cb_buf *b) { CB_PUT(b, 1, mp_encode_nil(w_)); }
void cb_bool(cb_buf *b, int v) { CB_PUT(b, 1, mp_encode_bool(w_, v != 0)); }
void cb_int(cb_buf *b, int64_t v)
{
    if (v < 0)
        CB_PUT(b, 9, mp_encode_int(w_, v));
    else
        CB_PUT(b, 9, mp_encode_uint(w_, (uint64_t)v));
}
void cb_double(cb_buf *b, double v) { CB_PUT(b, 9, mp_encode_double(w_, v)); }
void cb_array(cb_buf *b, uint32_t n) { CB_PUT(b, 5, mp_encode_array(w_, n)); }
void cb_map(cb_buf *b, uint32_t n) { CB_PUT(b, 5, mp_encode_map(w_, n)); }
/* A str or bin: its header (5 bytes at most), then the bytes. */
static void cb_blob(cb_buf *b, const char *p, size_t n, int bin)
{
    if (n > UINT32_MAX) {
        b->oom = 1;
        return;
    }
    CB_PUT(b, 5, bin ? mp_encode_binl(w_, (uint32_t)n) : mp_encode_strl(w_, (uint32_t)n));
    cb_append(b, p, n);
}
void cb_str(cb_buf *b, const char *p, size_t n) { cb_blob(b, p, n, 0); }
void cb_bin(cb_buf *b, const char *p, size_t n) { cb_blob(b, p, n, 1); }

int cb_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p++;
        if (c < 0x80)
            continue;
        int k;
        unsigned min;
        if ((c & 0xE0) == 0xC0) { k = 1; min = 0x80; c &= 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; min = 0x800; c &= 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; min = 0x10000; c &= 0x07; }
        else return 0;
        if (end - p < k)
            return 0;
        for (int i = 0; i < k; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            c = (c << 6) | (p[i] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        p += k;
    }
    return 1;
}

/* ---- requests ----------------------------------------------------------------------------- */

int cb_parse_request(const char *p, uint32_t n, cb_request *req, char *why, size_t whysz)
{
    const char *r = p, *end = p + n, *chk = p;
    uint32_t cnt, len;
    if (mp_check(&chk, end) || chk != end) {
        snprintf(why, whysz, "malformed request");
        return -1;
    }
    uint32_t fields = mp_typeof(*r) == MP_ARRAY ? mp_decode_array(&r) : 0;
    if (fields != 5 && fields != 6) {
        snprintf(why, whysz, "request is not a 5- or 6-element array");
        return -1;
    }
    if (mp_typeof(*r) == MP_STR)
        req->code = mp_decode_str(&r, &req->code_len);
    else if (mp_typeof(*r) == MP_BIN)
        req->code = mp_decode_bin(&r, &req->code_len);
    else {
        snprintf(why, whysz, "code is not a string");
        return -1;
    }
    if (mp_typeof(*r) != MP_ARRAY || (cnt = mp_decode_array(&r)) > CB_MAX_TOOLS) {
        snprintf(why, whysz, "tools: expected an array of at most %d names", CB_MAX_TOOLS);
        return -1;
    }
    req->ntools = cnt;
    for (uint32_t i = 0; i < cnt; i++) {
        if (mp_typeof(*r) != MP_STR) {
            snprintf(why, whysz, "tool name %u is not a string", i);
            return -1;
        }
        req->tools[i] = mp_decode_str(&r, &req->tool_lens[i]);
    }
    if (mp_typeof(*r) != MP_UINT) {
        snprintf(why, whysz, "max_output is not an unsigned integer");
        return -1;
    }
    req->max_output = mp_decode_uint(&r);
    if (mp_typeof(*r) != MP_UINT) {
        snprintf(why, whysz, "memory_limit is not an unsigned integer");
        return -1;
    }
    req->memory_limit = mp_decode_uint(&r);
    if (mp_typeof(*r) != MP_STR) {
        snprintf(why, whysz, "filename is not a string");
        return -1;
    }
    const char *fn = mp_decode_str(&r, &len);
    if (len >= sizeof req->filename)
        len = sizeof req->filename - 1;
    memcpy(req->filename, fn, len);
    req->filename[len] = '\0';
    req->has_files = 0;
    req->files = NULL;
    req->max_files_out = 0;
    if (fields == 6) {
        if (mp_typeof(*r) != MP_ARRAY || mp_decode_array(&r) != 2 || mp_typeof(*r) != MP_MAP) {
            snprintf(why, whysz, "files: expected [map, max_files_out]");
            return -1;
        }
        req->files = r;
        uint32_t nf = mp_decode_map(&r);
        for (uint32_t i = 0; i < nf; i++) {
            if (mp_typeof(*r) != MP_STR) {
                snprintf(why, whysz, "files: a name is not a string");
                return -1;
            }
            mp_next(&r);
            if (mp_typeof(*r) != MP_BIN) {
                snprintf(why, whysz, "files: contents are not bytes");
                return -1;
            }
            mp_next(&r);
        }
        if (mp_typeof(*r) != MP_UINT) {
            snprintf(why, whysz, "files: max_files_out is not an unsigned integer");
            return -1;
        }
        req->max_files_out = mp_decode_uint(&r);
        req->has_files = 1;
    }
    return 0;
}

/* ---- output capture ----------------------------------------------------------------------- */

static cb_buf out_bufs[2];
static uint64_t out_cap, out_used;
static int out_truncated;

void cb_output_begin(uint64_t cap)
{
    cb_reset(&out_bufs[0]);
    cb_reset(&out_bufs[1]);
    out_cap = cap;
    out_used = 0;
    out_truncated = 0;
}

int cb_output_write(int stream, const char *p, size_t n)
{
    cb_buf *b = &out_bufs[stream == 2 ? 1 : 0];
    size_t room = out_used < out_cap ? (size_t)(out_cap - out_used) : 0;
    size_t keep = n < room ? n : room;
    cb_append(b, p, keep);
    out_used += keep;
    if (keep < n) {
        out_truncated = 1;
        return -1;
    }
    return 0;
}

int cb_output_truncated(void) { return out_truncated; }
const cb_buf *cb_output(int stream) { return &out_bufs[stream == 2 ? 1 : 0]; }

/* ---- responses ---------------------------------------------------------------------------- */

static cb_buf resp;

cb_buf *cb_response_begin(int status) { return cb_response_begin_ext(status, 0); }

cb_buf *cb_response_begin_ext(int status, uint32_t extra)
{
    cb_reset(&resp);
    cb_array(&resp, 6 + extra);
    cb_int(&resp, status);
    return &resp;
}

cb_buf *cb_response(void) { return &resp; }

void cb_response_finish(const char *type, const char *message, size_t message_len,
                        const char *stack, size_t stack_len, int64_t line)
{
    cb_bin(&resp, out_bufs[0].p, out_bufs[0].len);
    cb_bin(&resp, out_bufs[1].p, out_bufs[1].len);
    cb_bool(&resp, out_truncated);
    if (!type) {
        cb_nil(&resp);
        return;
    }
    cb_array(&resp, 4);
    cb_str(&resp, type, strlen(type));
    cb_bin(&resp, message ? message : "", message ? message_len : 0);
    cb_bin(&resp, stack ? stack : "", stack ? stack_len : 0);
    cb_int(&resp, line);
}

/* ---- tools -------------------------------------------------------------------------------- */

static cb_buf tool_req;
static char tool_err_type[128], tool_err_msg[4096];

static int tool_fail(const char *type, const char *msg, size_t len,
                     const char **err_type, const char **err_msg)
{
    snprintf(tool_err_type, sizeof tool_err_type, "%s", type);
    if (len >= sizeof tool_err_msg)
        len = sizeof tool_err_msg - 1;
    memcpy(tool_err_msg, msg, len);
    tool_err_msg[len] = '\0';
    *err_type = tool_err_type;
    *err_msg = tool_err_msg;
    return -1;
}

int cb_call_tool(const char *name, size_t name_len, const cb_buf *args_array,
                 const char **value, const char **value_end,
                 const char **err_type, const char **err_msg)
{
    return cb_call_tool_kw(name, name_len, args_array, NULL, value, value_end, err_type, err_msg);
}

int cb_call_tool_kw(const char *name, size_t name_len, const cb_buf *args_array,
                    const cb_buf *kwargs_map, const char **value, const char **value_end,
                    const char **err_type, const char **err_msg)
{
    cb_reset(&tool_req);
    cb_array(&tool_req, kwargs_map ? 3 : 2);
    cb_str(&tool_req, name, name_len);
    cb_append(&tool_req, args_array->p, args_array->len);
    if (kwargs_map)
        cb_append(&tool_req, kwargs_map->p, kwargs_map->len);
    if (tool_req.oom || args_array->oom || (kwargs_map && kwargs_map->oom))
        return tool_fail("InternalError", "out of memory encoding the tool call", 36, err_type, err_msg);
    sc_value res;
    if (sc_call_host("CodeTool", SC_BYTES, &res, 1, sc_bytes(tool_req.p, (uint32_t)tool_req.len)) != 0) {
        const char *m = sc_host_error();
        return tool_fail("ToolError", m, strlen(m), err_type, err_msg);
    }
    const char *r = (const char *)res.bytes.ptr, *end = r + res.bytes.len, *chk = r;
    if (mp_check(&chk, end) || chk != end || mp_typeof(*r) != MP_ARRAY)
        return tool_fail("ToolError", "malformed tool reply", 20, err_type, err_msg);
    uint32_t cnt = mp_decode_array(&r);
    if (cnt < 2 || mp_typeof(*r) != MP_UINT)
        return tool_fail("ToolError", "malformed tool reply", 20, err_type, err_msg);
    uint64_t status = mp_decode_uint(&r);
    if (status == 0 && cnt == 2) {
        *value = r;
        mp_next(&r);
        *value_end = r;
        return 0;
    }
    if (status == 1 && cnt == 3 && mp_typeof(*r) == MP_STR) {
        uint32_t tl, ml;
        const char *t = mp_decode_str(&r, &tl);
        if (mp_typeof(*r) != MP_STR)
            return tool_fail("ToolError", "malformed tool reply", 20, err_type, err_msg);
        const char *m = mp_decode_str(&r, &ml);
        if (tl >= sizeof tool_err_type)
            tl = sizeof tool_err_type - 1;
        memcpy(tool_err_type, t, tl);
        tool_err_type[tl] = '\0';
        if (ml >= sizeof tool_err_msg)
            ml = sizeof tool_err_msg - 1;
        memcpy(tool_err_msg, m, ml);
        tool_err_msg[ml] = '\0';
        *err_type = tool_err_type;
        *err_msg = tool_err_msg;
        return -1;
    }
    return tool_fail("ToolError", "malformed tool reply", 20, err_type, err_msg);
}

/* ---- PRNG --------------------------------------------------------------------------------- */

static uint64_t rng_s[4];
static uint8_t rng_seed_bytes[32];

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cb_rng_next(void)
{
    uint64_t result = rotl(rng_s[1] * 5, 7) * 9, t = rng_s[1] << 17;
    rng_s[2] ^= rng_s[0];
    rng_s[3] ^= rng_s[1];
    rng_s[1] ^= rng_s[2];
    rng_s[0] ^= rng_s[3];
    rng_s[2] ^= t;
    rng_s[3] = rotl(rng_s[3], 45);
    return result;
}

double cb_rng_double(void) { return (double)(cb_rng_next() >> 11) * 0x1.0p-53; }
const uint8_t *cb_rng_seed(void) { return rng_seed_bytes; }

static void rng_reseed(const uint8_t seed[32], uint64_t generation)
{
    (void)generation;
    memcpy(rng_seed_bytes, seed, 32);
    memcpy(rng_s, seed, 32);
    if (!(rng_s[0] | rng_s[1] | rng_s[2] | rng_s[3]))
        rng_s[0] = 1;
}

void cb_rng_init(void)
{
    uint8_t seed[32];
    /* the initial state (before any from_snapshot) comes from AT_RANDOM-backed getrandom */
    if (getentropy(seed, sizeof seed) != 0)
        memset(seed, 0x5A, sizeof seed);
    rng_reseed(seed, 0);
    sc_on_reseed(rng_reseed);
}

/* ---- line numbers ------------------------------------------------------------------------- */

int64_t cb_find_line(const char *text, size_t len, const char *filename)
{
    size_t fl = strlen(filename);
    if (!text || fl == 0)
        return 0;
    for (size_t i = 0; i + fl + 1 < len; i++) {
        if (memcmp(text + i, filename, fl) == 0 && text[i + fl] == ':') {
            int64_t v = 0;
            size_t j = i + fl + 1;
            int digits = 0;
            while (j < len && text[j] >= '0' && text[j] <= '9' && digits < 12) {
                v = v * 10 + (text[j] - '0');
                j++;
                digits++;
            }
            if (digits)
                return v;
        }
    }
    return 0;
}
