/* cbstream: live output for the JS and Lua guests (see cbstream.h). */
#include "cbstream.h"

#include <string.h>

static int on;                 /* streaming this run */
static size_t sent[2];         /* bytes of each output buffer already sent */
static cb_buf args;

int cbs_is_tool(const char *name, uint32_t len)
{
    return len == sizeof CBS_TOOL - 1 && memcmp(name, CBS_TOOL, len) == 0;
}

void cbs_begin(const cb_request *req)
{
    on = 0;
    sent[0] = sent[1] = 0;
    for (uint32_t i = 0; i < req->ntools; i++)
        on |= cbs_is_tool(req->tools[i], req->tool_lens[i]);
}

/* Send output buffer i's unsent bytes as one chunk. A failed call (the host stopped
 * listening) ends streaming; the output stays in the run's result either way. */
static void flush(int i)
{
    const cb_buf *b = cb_output(i + 1);
    if (!on || b->len <= sent[i])
        return;
    cb_reset(&args);
    cb_array(&args, 1);
    cb_array(&args, 1);
    cb_array(&args, 2);
    cb_int(&args, i + 1);
    cb_bin(&args, b->p + sent[i], b->len - sent[i]);
    sent[i] = b->len;
    const char *v, *ve, *et, *em;
    if (cb_call_tool(CBS_TOOL, sizeof CBS_TOOL - 1, &args, &v, &ve, &et, &em))
        on = 0;
}

int cbs_write(int stream, const char *p, size_t n)
{
    int i = stream == 2 ? 1 : 0;
    if (!on)
        return cb_output_write(stream, p, n);
    flush(1 - i);                       /* the other stream's partial line first */
    int rc = cb_output_write(stream, p, n);
    if (memchr(p, '\n', n))
        flush(i);
    return rc;
}

void cbs_end(void)
{
    flush(0);                           /* (at most one stream has bytes pending) */
    flush(1);
    on = 0;
}
