/*
 * codebox: what the interpreter guests (guests/js, guests/lua) share — the `Run` request and
 * response, output capture with a cap, a growable MessagePack buffer, tool calls through the
 * `CodeTool` host function, and a xoshiro256** PRNG reseeded from the ABI page.
 *
 * Wire formats (MessagePack; the host side is snapcell/code/protocol.py):
 *   Run(bytes request) -> bytes response
 *     request  = [code(str|bin), [tool_name(str), ...], max_output(uint), memory_limit(uint),
 *                 filename(str)(, files)]
 *                 files (guests with a file system: Python) = [{name(str): data(bin)},
 *                 max_files_out(uint)]
 *     response = [status(0 ok | 1 error), value, stdout(bin), stderr(bin), truncated(bool),
 *                 error(nil | [type(str), message(str), stack(str), line(int, 0 = unknown)])
 *                 (, [{name(str): data(bin)}, files_truncated(bool)])]   (when files were asked)
 *   CodeTool(bytes request) -> bytes reply              (a host function)
 *     request  = [tool_name(str), [arg, ...](, {keyword(str): arg})]
 *     reply    = [0, value] | [1, type(str), message(str)]
 */
#ifndef CODEBOX_H
#define CODEBOX_H

#include <stddef.h>
#include <stdint.h>

#include "msgpuck.h"

#define CB_MAX_DEPTH 64         /* nesting of marshalled values (deeper or cyclic: an error) */
#define CB_MAX_TOOLS 64

/* A growable byte buffer; `oom` is set (and stays set) when growing failed. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} cb_buf;

void cb_reset(cb_buf *b);
char *cb_room(cb_buf *b, size_t n);          /* room for n more bytes, or NULL (oom) */
void cb_append(cb_buf *b, const void *p, size_t n);
void cb_nil(cb_buf *b);
void cb_bool(cb_buf *b, int v);
void cb_int(cb_buf *b, int64_t v);
void cb_double(cb_buf *b, double v);
void cb_str(cb_buf *b, const char *p, size_t n);
void cb_bin(cb_buf *b, const char *p, size_t n);
void cb_array(cb_buf *b, uint32_t n);
void cb_map(cb_buf *b, uint32_t n);

/* Whether p[0..n) is valid UTF-8. */
int cb_utf8_valid(const char *p, size_t n);

/* A decoded Run request (pointers into the runtime-owned argument copy). */
typedef struct {
    const char *code;
    uint32_t code_len;
    uint32_t ntools;
    const char *tools[CB_MAX_TOOLS];
    uint32_t tool_lens[CB_MAX_TOOLS];
    uint64_t max_output;
    uint64_t memory_limit;
    char filename[128];
    int has_files;              /* the optional 6th element was given */
    const char *files;          /* its map of name -> data (MessagePack), when has_files */
    uint64_t max_files_out;
} cb_request;

/* Parse a Run request; 0 on success, -1 with a message in `why`. */
int cb_parse_request(const char *p, uint32_t n, cb_request *req, char *why, size_t whysz);

/* Output capture (stream 1 = stdout, 2 = stderr) with a combined cap per run. */
void cb_output_begin(uint64_t cap);
/* Append; returns 0, or -1 when the cap was reached (what fits is kept, `truncated` is set). */
int cb_output_write(int stream, const char *p, size_t n);
int cb_output_truncated(void);
const cb_buf *cb_output(int stream);

/* The response buffer: cb_response_begin() resets it and writes the status, then the caller
 * appends the value (status 0) or nil, and cb_response_finish() appends output and error. */
cb_buf *cb_response_begin(int status);
/* The same with `extra` fields after the six standard ones (the caller appends them after
 * cb_response_finish). */
cb_buf *cb_response_begin_ext(int status, uint32_t extra);
cb_buf *cb_response(void);                   /* the response buffer as it is */
/* Finish with an error (type, message, stack may be NULL) or with no error (type NULL). */
void cb_response_finish(const char *type, const char *message, size_t message_len,
                        const char *stack, size_t stack_len, int64_t line);

/* Call tool `name` with the MessagePack array `args` (count + encoded items). On success returns
 * 0 and points *value at the encoded result value (valid until the next tool call). On failure
 * returns -1 with *err_type and *err_msg set (NUL-terminated, static storage). */
int cb_call_tool(const char *name, size_t name_len, const cb_buf *args_array,
                 const char **value, const char **value_end,
                 const char **err_type, const char **err_msg);

/* The same with keyword arguments: `kwargs_map` (an encoded map of str -> value), or NULL. */
int cb_call_tool_kw(const char *name, size_t name_len, const cb_buf *args_array,
                    const cb_buf *kwargs_map, const char **value, const char **value_end,
                    const char **err_type, const char **err_msg);

/* xoshiro256**: reseeded with the ABI page seed on every new sandbox (call cb_rng_init once
 * in snapcell_main; extra hooks may be registered with sc_on_reseed as well). */
void cb_rng_init(void);
uint64_t cb_rng_next(void);
double cb_rng_double(void);          /* uniform in [0, 1) */
const uint8_t *cb_rng_seed(void);    /* the latest 32-byte seed */

/* Parse "NAME:LINE" (the first occurrence of `filename` followed by ':' and digits) from a
 * message or stack; 0 when absent. */
int64_t cb_find_line(const char *text, size_t len, const char *filename);

#endif
